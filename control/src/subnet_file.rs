//! `subnet.env`, the file CNI's flannel plugin and Docker setups read to learn this node's subnet,
//! written exactly as flanneld writes it, and read back at the next start to ask for the same
//! subnet again.
//!
//! Format (flannel's `WriteSubnetFile`, `pkg/subnet/subnetfile_unix.go`; the same lines and order
//! since flannel moved it out of `main.go`): one `KEY=value` per line, each ending in `\n`, in
//! this order, IPv4 lines only with `EnableIPv4` (the default), IPv6 lines only with
//! `EnableIPv6`:
//!
//! ```text
//! FLANNEL_NETWORK=10.5.0.0/16
//! FLANNEL_SUBNET=10.5.52.1/24
//! FLANNEL_IPV6_NETWORK=fc00::/48
//! FLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! An IPv6-only network (`EnableIPv4: false`) gets no `FLANNEL_NETWORK`/`FLANNEL_SUBNET` lines at
//! all, as flanneld's `WriteSubnetFile` skips them:
//!
//! ```text
//! FLANNEL_IPV6_NETWORK=fc00::/48
//! FLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64
//! FLANNEL_MTU=1430
//! FLANNEL_IPMASQ=false
//! ```
//!
//! `FLANNEL_SUBNET` is the lease's first address after the base, with the lease's prefix length.
//! The file is replaced atomically like flannel's `renameio` does: a temporary file in the same
//! directory, written, fsynced, renamed over the old one, then the directory fsynced; an existing
//! file's permissions are kept, a new one gets 0644.
//!
//! These functions block; call them from `spawn_blocking` in async code.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::lease::{first_usable_v4, first_usable_v6, SubnetKey};

/// flanneld's default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// Writing the subnet file failed.
#[derive(Debug, thiserror::Error)]
pub enum SubnetFileError {
    /// IPv4 is on but no IPv4 subnet was given.
    #[error(
        "EnableIPv4 is true for Network {network}, but the lease has no IPv4 subnet, so \
         FLANNEL_SUBNET cannot be written; the lease must be re-acquired with an IPv4 subnet"
    )]
    MissingIpv4Subnet {
        /// The configured IPv4 network.
        network: Ipv4Net,
    },
    /// IPv6 is on but no IPv6 subnet was given.
    #[error(
        "EnableIPv6 is true for IPv6Network {ipv6_network}, but the lease has no IPv6 subnet, so \
         FLANNEL_IPV6_SUBNET cannot be written; the lease must be re-acquired with an IPv6 subnet"
    )]
    MissingIpv6Subnet {
        /// The configured IPv6 network.
        ipv6_network: Ipv6Net,
    },
    /// The path has no file name (`/`, or ends in `..`).
    #[error("subnet file path {path:?} does not name a file; pass a file path to --subnet-file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error(
        "could not {action} {path:?}: {cause}; check that vxdp may write there, or choose \
         another path with --subnet-file"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error (in the message, not chained: the chain would print it twice).
        cause: io::Error,
    },
}

/// Why no previous subnet could be read from the subnet file. Not fatal: the node then gets a
/// subnet as if it had never run.
#[derive(Debug, thiserror::Error)]
pub enum NoPreviousSubnet {
    /// No file: the first start on this node (or `/run` was cleared by a reboot).
    #[error("no subnet file at {path:?} (first start on this node, or it was removed)")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read subnet file {path:?}: {cause}; a new subnet will be chosen")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The error (in the message, not chained: the chain would print it twice).
        cause: io::Error,
    },
    /// The file has neither `FLANNEL_SUBNET` nor `FLANNEL_IPV6_SUBNET`.
    #[error(
        "subnet file {path:?} has no FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET line; a new subnet \
         will be chosen"
    )]
    NoSubnet {
        /// The path.
        path: PathBuf,
    },
    /// A subnet value does not parse.
    #[error(
        "subnet file {path:?} has {key}={value:?}, which is not {expected}: {reason}; a new \
         subnet will be chosen (the file is rewritten once it is)"
    )]
    Garbled {
        /// The path.
        path: PathBuf,
        /// `FLANNEL_SUBNET` or `FLANNEL_IPV6_SUBNET`.
        key: &'static str,
        /// The value.
        value: String,
        /// What it should be.
        expected: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The subnet file's contents, byte for byte as flanneld writes them.
///
/// `subnet` and `ipv6_subnet` are the leased subnets (base addresses); `mtu` the overlay MTU
/// ([`NetworkConfig::mtu_for`]); `ip_masq` the `--ip-masq` flag.
pub fn render(
    config: &NetworkConfig,
    subnet: Option<Ipv4Net>,
    ipv6_subnet: Option<Ipv6Net>,
    mtu: u32,
    ip_masq: bool,
) -> Result<String, SubnetFileError> {
    let mut out = String::new();
    // Writing to a String cannot fail.
    if let Some(v4) = config.ipv4 {
        let sn = subnet.ok_or(SubnetFileError::MissingIpv4Subnet {
            network: v4.network,
        })?;
        let _ = writeln!(out, "FLANNEL_NETWORK={}", v4.network);
        let _ = writeln!(
            out,
            "FLANNEL_SUBNET={}/{}",
            first_usable_v4(sn),
            sn.prefix_len()
        );
    }
    if let Some(v6) = config.ipv6 {
        let sn6 = ipv6_subnet.ok_or(SubnetFileError::MissingIpv6Subnet {
            ipv6_network: v6.network,
        })?;
        let _ = writeln!(out, "FLANNEL_IPV6_NETWORK={}", v6.network);
        let _ = writeln!(
            out,
            "FLANNEL_IPV6_SUBNET={}/{}",
            first_usable_v6(sn6),
            sn6.prefix_len()
        );
    }
    let _ = writeln!(out, "FLANNEL_MTU={mtu}");
    let _ = writeln!(out, "FLANNEL_IPMASQ={ip_masq}");
    Ok(out)
}

/// Renders the subnet file ([`render`]) and replaces `path` with it atomically
/// ([`write_atomically`]).
pub fn write_subnet_file(
    path: &Path,
    config: &NetworkConfig,
    subnet: Option<Ipv4Net>,
    ipv6_subnet: Option<Ipv6Net>,
    mtu: u32,
    ip_masq: bool,
) -> Result<(), SubnetFileError> {
    let text = render(config, subnet, ipv6_subnet, mtu, ip_masq)?;
    write_atomically(path, text.as_bytes())
}

/// Replaces `path` with `contents` so that readers see the old file or the new one, never a
/// part: creates the parent directories (0755), writes a temporary file beside `path`, fsyncs
/// it, gives it the old file's permissions (0644 for a new file, regardless of umask), renames
/// it over `path` and fsyncs the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SubnetFileError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |cause| SubnetFileError::Io {
            action,
            path,
            cause,
        }
    };
    let name = path.file_name().ok_or_else(|| SubnetFileError::NotAFile {
        path: path.to_path_buf(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("create the directory", dir))?;
    let perm = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);

    let (tmp_path, mut file) = create_temp(dir, name).map_err(io_err("create a file in", dir))?;
    let tmp = RemoveOnDrop(Some(tmp_path));
    let tmp_path = tmp.path();
    file.write_all(contents)
        .map_err(io_err("write", tmp_path))?;
    file.set_permissions(Permissions::from_mode(perm))
        .map_err(io_err("set permissions of", tmp_path))?;
    file.sync_all().map_err(io_err("fsync", tmp_path))?;
    drop(file);
    fs::rename(tmp_path, path).map_err(io_err("rename the new file onto", path))?;
    tmp.disarm();
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

/// A new, empty file `.<name>.<pid>.<n>.tmp` in `dir`, never an existing one.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for n in 0..64u32 {
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

/// Removes the temporary file on any early return.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// The subnets a previous run wrote into the subnet file, as lease subnets (`FLANNEL_SUBNET=
/// 10.5.52.1/24` gives 10.5.52.0/24, as Go's `net.ParseCIDR` does in flanneld's
/// `ReadCIDRFromSubnetFile`), or why there are none.
///
/// Lenient about the file's form (blank lines, `#` comments, `export `, quotes: what the dotenv
/// reader flanneld uses accepts), strict about the values: a garbled `FLANNEL_SUBNET` or
/// `FLANNEL_IPV6_SUBNET` yields no previous subnet at all rather than half of one.
pub fn read_previous_subnet(path: &Path) -> Result<SubnetKey, NoPreviousSubnet> {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NoPreviousSubnet::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(cause) => {
            return Err(NoPreviousSubnet::Unreadable {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    parse_previous_subnet(&text, path)
}

/// [`read_previous_subnet`] on the file's text; `path` is for the messages.
#[doc(hidden)] // public for the fuzz targets in control/fuzz
pub fn parse_previous_subnet(text: &str, path: &Path) -> Result<SubnetKey, NoPreviousSubnet> {
    let vars = parse_env(text);
    let garbled = |key: &'static str, value: &str, expected: &'static str, reason: String| {
        NoPreviousSubnet::Garbled {
            path: path.to_path_buf(),
            key,
            value: value.into(),
            expected,
            reason,
        }
    };
    let parse = |key: &'static str, expected: &'static str| -> Result<Option<IpNet>, _> {
        let Some(value) = vars.get(key) else {
            return Ok(None);
        };
        if value.contains(',') {
            let reason = "it lists several subnets (a multi-network file)".into();
            return Err(garbled(key, value, expected, reason));
        }
        value
            .parse::<IpNet>()
            .map(|n| Some(n.trunc()))
            .map_err(|e| garbled(key, value, expected, e.to_string()))
    };

    const V4: &str = "an IPv4 address with prefix length like 10.5.52.1/24";
    const V6: &str = "an IPv6 address with prefix length like fc00:0:0:34::1/64";
    // An IPv6-only network's file has no FLANNEL_SUBNET.
    let subnet = match parse("FLANNEL_SUBNET", V4)? {
        None => None,
        Some(IpNet::V4(n)) => Some(n),
        Some(IpNet::V6(_)) => {
            let value = vars.get("FLANNEL_SUBNET").map_or("", String::as_str);
            return Err(garbled("FLANNEL_SUBNET", value, V4, "it is IPv6".into()));
        }
    };
    let ipv6_subnet = match parse("FLANNEL_IPV6_SUBNET", V6)? {
        None => None,
        Some(IpNet::V6(n)) => Some(n),
        Some(IpNet::V4(_)) => {
            let value = vars.get("FLANNEL_IPV6_SUBNET").map_or("", String::as_str);
            return Err(garbled(
                "FLANNEL_IPV6_SUBNET",
                value,
                V6,
                "it is IPv4".into(),
            ));
        }
    };
    SubnetKey::from_parts(subnet, ipv6_subnet).ok_or_else(|| NoPreviousSubnet::NoSubnet {
        path: path.to_path_buf(),
    })
}

/// `KEY=value` lines as a dotenv reader takes them: blank lines and `#` comments skipped, an
/// `export ` prefix allowed, values trimmed and unquoted, ` #` comments after unquoted values
/// dropped; of repeated keys the last wins.
fn parse_env(text: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let quoted = value.len() >= 2
            && (value.starts_with('"') && value.ends_with('"')
                || value.starts_with('\'') && value.ends_with('\''));
        let value = if quoted {
            &value[1..value.len() - 1]
        } else {
            value.split_once(" #").map_or(value, |(v, _)| v).trim_end()
        };
        vars.insert(key.trim().to_string(), value.to_string());
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn v4_cfg() -> NetworkConfig {
        config::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap()
    }

    fn dual_cfg() -> NetworkConfig {
        config::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap()
    }

    const V4_FILE: &str =
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    const DUAL_FILE: &str = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n\
        FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64\n\
        FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";

    fn sn() -> Option<Ipv4Net> {
        Some("10.5.52.0/24".parse().unwrap())
    }

    fn key(sn: Option<Ipv4Net>, sn6: Option<Ipv6Net>) -> SubnetKey {
        SubnetKey::from_parts(sn, sn6).unwrap()
    }

    fn sn6() -> Ipv6Net {
        "fc00:0:0:34::/64".parse().unwrap()
    }

    #[test]
    fn renders_like_flanneld() {
        assert_eq!(render(&v4_cfg(), sn(), None, 1450, false).unwrap(), V4_FILE);
        assert_eq!(
            render(&dual_cfg(), sn(), Some(sn6()), 1430, true).unwrap(),
            DUAL_FILE
        );
        // An IPv6 subnet without EnableIPv6 is not written, as in flannel.
        assert_eq!(
            render(&v4_cfg(), sn(), Some(sn6()), 1450, false).unwrap(),
            V4_FILE
        );
        assert!(matches!(
            render(&dual_cfg(), sn(), None, 1450, false),
            Err(SubnetFileError::MissingIpv6Subnet { .. })
        ));
        assert!(matches!(
            render(&v4_cfg(), None, Some(sn6()), 1450, false),
            Err(SubnetFileError::MissingIpv4Subnet { .. })
        ));
    }

    /// What flanneld's `WriteSubnetFile` writes with `EnableIPv4: false`: the IPv4 lines are
    /// skipped (`if config.EnableIPv4`), the IPv6 ones and MTU/IPMASQ stay.
    #[test]
    fn renders_an_ipv6_only_network_like_flanneld() {
        let cfg = config::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let text = render(&cfg, None, Some(sn6()), 1430, false).unwrap();
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
        // An IPv4 subnet with IPv4 off is not written, as in flannel.
        assert_eq!(render(&cfg, sn(), Some(sn6()), 1430, false).unwrap(), text);
        assert!(matches!(
            render(&cfg, None, None, 1430, false),
            Err(SubnetFileError::MissingIpv6Subnet { .. })
        ));
        // Read back at the next start: the IPv6-only key.
        let again = parse_previous_subnet(&text, Path::new("subnet.env")).unwrap();
        assert_eq!(again, SubnetKey::ipv6_only(sn6()));
        assert!(matches!(
            parse_previous_subnet("FLANNEL_MTU=1430\n", Path::new("subnet.env")),
            Err(NoPreviousSubnet::NoSubnet { .. })
        ));
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/flannel/subnet.env");
        write_subnet_file(&path, &v4_cfg(), sn(), None, 1450, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), V4_FILE.as_bytes());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(dir_entries(path.parent().unwrap()), ["subnet.env"]);
        assert_eq!(read_previous_subnet(&path).unwrap(), key(sn(), None));

        // Rewriting keeps the file's permissions and leaves no temporary file behind.
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        write_subnet_file(&path, &dual_cfg(), sn(), Some(sn6()), 1430, true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), DUAL_FILE.as_bytes());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(dir_entries(path.parent().unwrap()), ["subnet.env"]);
        assert_eq!(read_previous_subnet(&path).unwrap(), key(sn(), Some(sn6())));
    }

    #[test]
    fn write_failures_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        // The parent "directory" is a file.
        let blocker = tmp.path().join("blocker");
        fs::write(&blocker, "x").unwrap();
        let e = write_atomically(&blocker.join("subnet.env"), b"x").unwrap_err();
        assert!(matches!(e, SubnetFileError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("blocker"), "{e}");
        assert!(e.to_string().contains("--subnet-file"), "{e}");
        // The target is a directory: the rename fails and the temporary file is removed.
        let target = tmp.path().join("adir");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("f"), "x").unwrap();
        assert!(write_atomically(&target, b"x").is_err());
        assert_eq!(dir_entries(tmp.path()), ["adir", "blocker"]);
        assert!(matches!(
            write_atomically(Path::new("/"), b"x"),
            Err(SubnetFileError::NotAFile { .. })
        ));
    }

    #[test]
    fn previous_subnet_is_read_leniently() {
        let p = Path::new("/run/flannel/subnet.env");
        let ok = |text: &str| parse_previous_subnet(text, p).unwrap();
        assert_eq!(ok(V4_FILE), key(sn(), None));
        assert_eq!(ok(DUAL_FILE), key(sn(), Some(sn6())));
        // Host bits are cleared; comments, export, quotes, spaces and CRLF are tolerated; the
        // last of repeated keys wins.
        assert_eq!(
            ok("# written by flanneld\r\nexport FLANNEL_SUBNET = \"10.5.9.1/24\"\r\n\nFLANNEL_SUBNET='10.5.52.77/24' \r\n"),
            key(sn(), None)
        );
        assert_eq!(
            ok("FLANNEL_SUBNET=10.5.52.1/24 # comment\n"),
            key(sn(), None)
        );
        assert_eq!(ok("FLANNEL_SUBNET=10.5.52.1/24"), key(sn(), None));
    }

    #[test]
    fn previous_subnet_reasons() {
        let p = Path::new("/run/flannel/subnet.env");
        let err = |text: &str| parse_previous_subnet(text, p).unwrap_err();
        assert!(matches!(err(""), NoPreviousSubnet::NoSubnet { .. }));
        assert!(matches!(
            err("FLANNEL_MTU=1450\n"),
            NoPreviousSubnet::NoSubnet { .. }
        ));
        for (text, key) in [
            ("FLANNEL_SUBNET=banana\n", "FLANNEL_SUBNET"),
            ("FLANNEL_SUBNET=10.5.52.1\n", "FLANNEL_SUBNET"),
            ("FLANNEL_SUBNET=fc00::1/64\n", "FLANNEL_SUBNET"),
            (
                "FLANNEL_SUBNET=10.5.52.1/24,10.6.52.1/24\n",
                "FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_SUBNET=10.0.0.1/8\n",
                "FLANNEL_IPV6_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_SUBNET=zz\n",
                "FLANNEL_IPV6_SUBNET",
            ),
        ] {
            let e = err(text);
            assert!(
                matches!(&e, NoPreviousSubnet::Garbled { key: k, .. } if *k == key),
                "{text:?}: {e:?}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }

        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.env");
        assert!(matches!(
            read_previous_subnet(&missing),
            Err(NoPreviousSubnet::Missing { .. })
        ));
        assert!(matches!(
            read_previous_subnet(tmp.path()),
            Err(NoPreviousSubnet::Unreadable { .. })
        ));
        // Invalid UTF-8 elsewhere in the file does not hide the subnet.
        let odd = tmp.path().join("odd.env");
        fs::write(&odd, b"X=\xff\xfe\nFLANNEL_SUBNET=10.5.52.1/24\n").unwrap();
        assert_eq!(read_previous_subnet(&odd).unwrap(), key(sn(), None));
    }
}
