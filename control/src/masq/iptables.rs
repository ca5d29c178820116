//! The iptables backend: flannel's chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter), the
//! jumps to them appended to `POSTROUTING` and `FORWARD`, for `iptables` and `ip6tables`.
//!
//! A chain's rules are written with one `iptables-restore --noflush` transaction: declaring the
//! chain (`:FLANNEL-POSTRTG - [0:0]`) creates it or flushes it, then the rules are appended, so the
//! chain always holds flannel's rules in flannel's order (flannel gets the same from deleting and
//! re-appending them through `iptables-restore`). The jumps are checked with `-C` and appended
//! with `-A` when missing. [`Iptables::ensure`] compares `iptables -S <chain>` with what it read
//! right after writing the chain (one command per chain instead of one `-C` per rule: on a node
//! with kube-proxy's thousands of rules every iptables-nft call reads the whole ruleset), and
//! `-C`s the jumps.

use std::path::{Path, PathBuf};

use super::{
    forward_rules, masq_rules, run, Addr, Family, FamilyNets, IptablesTools, MasqConfig, MasqError,
    Ran, Rule, Verdict, KUBE_PROXY_MARK,
};

/// flannel's NAT chain.
pub(super) const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
/// flannel's FORWARD chain.
pub(super) const FWD_CHAIN: &str = "FLANNEL-FWD";
/// Wait up to this many seconds for the xtables lock (iptables-legacy) instead of failing at once;
/// bounded so a stuck lock holder cannot hang vxdp's shutdown.
const WAIT_SECONDS: &str = "10";
/// At most this many copies of a jump are deleted (a loop guard; flanneld leaves one).
const MAX_JUMP_COPIES: usize = 16;

/// Installed rules for every family.
#[derive(Debug)]
pub(super) struct Iptables {
    families: Vec<IptFamily>,
}

/// One family's tool and chains.
#[derive(Debug)]
struct IptFamily {
    /// `iptables` or `ip6tables`.
    iptables: PathBuf,
    /// `iptables-restore` or `ip6tables-restore`.
    restore: PathBuf,
    random_fully: bool,
    chains: Vec<OwnedChain>,
}

/// A chain vxdp owns and the jump that leads to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnedChain {
    pub(super) table: &'static str,
    pub(super) name: &'static str,
    /// The built-in chain holding the jump.
    pub(super) from: &'static str,
    /// The jump's rule spec (after `-A <from>`).
    pub(super) jump: Vec<String>,
    /// The chain's rule specs (after `-A <name>`), in order.
    pub(super) rules: Vec<Vec<String>>,
    /// `iptables -S <name>` right after the chain was last written.
    snapshot: String,
}

/// The chains flannel installs for one family.
pub(super) fn chains(cfg: &MasqConfig, nets: &FamilyNets, random_fully: bool) -> Vec<OwnedChain> {
    let mut v = Vec::new();
    if cfg.ip_masq {
        v.push(OwnedChain {
            table: "nat",
            name: POSTRTG_CHAIN,
            from: "POSTROUTING",
            jump: jump_spec(super::MASQ_COMMENT, POSTRTG_CHAIN),
            rules: masq_rules(nets)
                .iter()
                .map(|r| rule_spec(r, random_fully))
                .collect(),
            snapshot: String::new(),
        });
    }
    if cfg.forward_rules {
        v.push(OwnedChain {
            table: "filter",
            name: FWD_CHAIN,
            from: "FORWARD",
            jump: jump_spec(super::FORWARD_COMMENT, FWD_CHAIN),
            rules: forward_rules(nets)
                .iter()
                .map(|r| rule_spec(r, random_fully))
                .collect(),
            snapshot: String::new(),
        });
    }
    v
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn jump_spec(comment: &str, chain: &str) -> Vec<String> {
    strings(&["-m", "comment", "--comment", comment, "-j", chain])
}

/// A rule as flannel writes it: `[! ]-s`, `[! ]-d`, the comment, the target.
pub(super) fn rule_spec(r: &Rule, random_fully: bool) -> Vec<String> {
    let mut a = Vec::new();
    if r.kube_proxy_mark {
        let mark = format!("{KUBE_PROXY_MARK:#x}/{KUBE_PROXY_MARK:#x}");
        a.extend(strings(&["-m", "mark", "--mark"]));
        a.push(mark);
    }
    for (flag, addr) in [("-s", r.src), ("-d", r.dst)] {
        match addr {
            Addr::Any => {}
            Addr::In(n) => a.extend([flag.to_owned(), n.to_string()]),
            Addr::NotIn(n) => a.extend(["!".to_owned(), flag.to_owned(), n.to_string()]),
        }
    }
    a.extend(strings(&["-m", "comment", "--comment", r.comment, "-j"]));
    match r.verdict {
        Verdict::Return => a.push("RETURN".into()),
        Verdict::Accept => a.push("ACCEPT".into()),
        Verdict::Masquerade => {
            a.push("MASQUERADE".into());
            if random_fully {
                a.push("--random-fully".into());
            }
        }
    }
    a
}

/// `iptables-restore --noflush` input that (re)writes `chains`, grouped by table.
pub(super) fn restore_input<'a>(chains: impl IntoIterator<Item = &'a OwnedChain>) -> String {
    let mut tables: Vec<(&str, Vec<&OwnedChain>)> = Vec::new();
    for c in chains {
        match tables.iter_mut().find(|(t, _)| *t == c.table) {
            Some((_, v)) => v.push(c),
            None => tables.push((c.table, vec![c])),
        }
    }
    let mut s = String::new();
    for (table, chains) in tables {
        s.push_str(&format!("*{table}\n"));
        for c in &chains {
            // Declaring a chain with --noflush creates it, or flushes it if it exists.
            s.push_str(&format!(":{} - [0:0]\n", c.name));
        }
        for c in &chains {
            for r in &c.rules {
                s.push_str(&format!("-A {}", c.name));
                for a in r {
                    s.push(' ');
                    s.push_str(&super::quote(a));
                }
                s.push('\n');
            }
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// Whether this iptables knows `--random-fully`: version 1.6.2 or later, the test go-iptables'
/// `HasRandomFully` makes for flannel.
fn supports_random_fully(iptables: &Path) -> bool {
    let out = run(iptables, &["--version".to_owned()], None).and_then(Ran::ok);
    match out {
        Ok(out) => parse_version(&out).is_some_and(|v| v >= (1, 6, 2)),
        Err(e) => {
            tracing::debug!("cannot tell the iptables version, not using --random-fully: {e}");
            false
        }
    }
}

/// `(1, 8, 9)` from `iptables v1.8.9 (nf_tables)`.
pub(super) fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

impl Iptables {
    /// Installs every family's chains; on failure removes what was installed.
    pub(super) fn install(tools: IptablesTools, cfg: &MasqConfig) -> Result<Iptables, MasqError> {
        let mut families = Vec::new();
        for nets in cfg.families() {
            let (iptables, restore) = match nets.family {
                Family::V4 => tools.v4.clone(),
                Family::V6 => match &tools.v6 {
                    Some(t) => t.clone(),
                    None => {
                        return Err(MasqError::NoTool(
                            "the network has IPv6 but ip6tables was not found".into(),
                        ))
                    }
                },
            };
            // Only MASQUERADE rules take --random-fully.
            let random_fully = cfg.ip_masq && cfg.random_fully && supports_random_fully(&iptables);
            families.push(IptFamily {
                chains: chains(cfg, &nets, random_fully),
                iptables,
                restore,
                random_fully,
            });
        }
        let mut ipt = Iptables { families };
        for i in 0..ipt.families.len() {
            if let Err(e) = ipt.families[i].install() {
                if let Err(undo) = ipt.remove_all() {
                    tracing::warn!("undoing a failed install left rules behind: {undo}");
                }
                return Err(e);
            }
        }
        Ok(ipt)
    }

    /// Whether every family's MASQUERADE rules use `--random-fully`.
    pub(super) fn random_fully(&self) -> bool {
        self.families.iter().all(|f| f.random_fully)
    }

    /// Rewrites changed chains and re-adds missing jumps; `Ok(true)` if anything was repaired.
    pub(super) fn ensure(&mut self) -> Result<bool, MasqError> {
        let mut repaired = false;
        for f in &mut self.families {
            repaired |= f.ensure()?;
        }
        Ok(repaired)
    }

    /// Removes every jump and chain this installed.
    pub(super) fn remove(self) -> Result<(), MasqError> {
        self.remove_all()
    }

    fn remove_all(&self) -> Result<(), MasqError> {
        let mut first = None;
        for f in self.families.iter().rev() {
            for c in f.chains.iter().rev() {
                if let Err(e) = f.remove_chain(c) {
                    tracing::warn!("removing {} ({}): {e}", c.name, c.table);
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl IptFamily {
    /// `iptables -w N -t <table> <args...>`.
    fn cmd(&self, table: &str, args: &[&str]) -> Vec<String> {
        let mut v = strings(&["-w", WAIT_SECONDS, "-t", table]);
        v.extend(strings(args));
        v
    }

    fn rule_cmd(&self, table: &str, op: &str, chain: &str, spec: &[String]) -> Vec<String> {
        let mut v = self.cmd(table, &[op, chain]);
        v.extend_from_slice(spec);
        v
    }

    fn install(&mut self) -> Result<(), MasqError> {
        if self.chains.is_empty() {
            return Ok(());
        }
        let all: Vec<usize> = (0..self.chains.len()).collect();
        self.write_chains(&all)?;
        // Verify with -C what was written: the ruleset must now hold each rule as flannel
        // writes it.
        for c in &self.chains {
            for r in &c.rules {
                let args = self.rule_cmd(c.table, "-C", c.name, r);
                let ran = run(&self.iptables, &args, None)?;
                if !ran.success {
                    return Err(MasqError::Failed {
                        command: ran.command,
                        status: format!("rule missing right after writing {}", c.name),
                        stderr: ran.stderr,
                        hint: "another program rewrote the ruleset at the same moment, or this \
                               iptables renders the rule differently; report it with the output \
                               of iptables-save"
                            .into(),
                    });
                }
            }
        }
        for c in &self.chains {
            self.ensure_jump(c)?;
        }
        Ok(())
    }

    /// Writes the chains at `which` in one transaction and records their new listings.
    fn write_chains(&mut self, which: &[usize]) -> Result<(), MasqError> {
        let input = restore_input(which.iter().map(|&i| &self.chains[i]));
        let args = strings(&["-w", WAIT_SECONDS, "--noflush"]);
        run(&self.restore, &args, Some(&input))?.ok()?;
        for &i in which {
            let c = &self.chains[i];
            let listing = self.list(c.table, c.name)?;
            let Some(listing) = listing else {
                return Err(MasqError::Failed {
                    command: format!("{} {}", self.restore.display(), args.join(" ")),
                    status: format!("chain {} missing right after writing it", c.name),
                    stderr: String::new(),
                    hint: "another program rewrote the ruleset at the same moment; retry".into(),
                });
            };
            self.chains[i].snapshot = listing;
        }
        Ok(())
    }

    /// `iptables -S <chain>`; `None` when the chain does not exist.
    fn list(&self, table: &str, chain: &str) -> Result<Option<String>, MasqError> {
        let ran = run(&self.iptables, &self.cmd(table, &["-S", chain]), None)?;
        if ran.success {
            Ok(Some(ran.stdout))
        } else if ran.code == Some(1) {
            Ok(None)
        } else {
            Err(ran.error())
        }
    }

    /// `iptables -C`: whether the rule exists (exit 1 means it does not).
    fn check(&self, table: &str, chain: &str, spec: &[String]) -> Result<bool, MasqError> {
        let ran = run(
            &self.iptables,
            &self.rule_cmd(table, "-C", chain, spec),
            None,
        )?;
        if ran.success {
            Ok(true)
        } else if ran.code == Some(1) {
            Ok(false)
        } else {
            Err(ran.error())
        }
    }

    /// Appends the jump to `c` unless it is there; `Ok(true)` if it had to.
    fn ensure_jump(&self, c: &OwnedChain) -> Result<bool, MasqError> {
        if self.check(c.table, c.from, &c.jump)? {
            return Ok(false);
        }
        let args = self.rule_cmd(c.table, "-A", c.from, &c.jump);
        run(&self.iptables, &args, None)?.ok()?;
        Ok(true)
    }

    fn ensure(&mut self) -> Result<bool, MasqError> {
        let mut stale = Vec::new();
        for (i, c) in self.chains.iter().enumerate() {
            if self.list(c.table, c.name)?.as_deref() != Some(c.snapshot.as_str()) {
                tracing::warn!(
                    "{} ({}) is missing or was changed; rewriting it with flanneld's rules",
                    c.name,
                    c.table
                );
                stale.push(i);
            }
        }
        if !stale.is_empty() {
            self.write_chains(&stale)?;
        }
        let mut repaired = !stale.is_empty();
        for c in &self.chains {
            if self.ensure_jump(c)? {
                tracing::warn!(
                    "the jump from {} to {} ({}) was missing; appended it again",
                    c.from,
                    c.name,
                    c.table
                );
                repaired = true;
            }
        }
        Ok(repaired)
    }

    /// Deletes the jumps to `c`, then flushes and deletes `c`.
    fn remove_chain(&self, c: &OwnedChain) -> Result<(), MasqError> {
        if self.list(c.table, c.name)?.is_none() {
            // A chain that does not exist has no jumps to it either.
            return Ok(());
        }
        for _ in 0..MAX_JUMP_COPIES {
            if !self.check(c.table, c.from, &c.jump)? {
                break;
            }
            let args = self.rule_cmd(c.table, "-D", c.from, &c.jump);
            run(&self.iptables, &args, None)?.ok()?;
        }
        run(&self.iptables, &self.cmd(c.table, &["-F", c.name]), None)?.ok()?;
        run(&self.iptables, &self.cmd(c.table, &["-X", c.name]), None)?.ok()?;
        Ok(())
    }
}

/// flannel's two chains and the jumps to them, without rules: what removing them takes.
fn flannel_chain_skeletons() -> Vec<OwnedChain> {
    let skeleton = |table, name, from, comment| OwnedChain {
        table,
        name,
        from,
        jump: jump_spec(comment, name),
        rules: Vec::new(),
        snapshot: String::new(),
    };
    vec![
        skeleton("nat", POSTRTG_CHAIN, "POSTROUTING", super::MASQ_COMMENT),
        skeleton("filter", FWD_CHAIN, "FORWARD", super::FORWARD_COMMENT),
    ]
}

/// Removes flannel's chains (`FLANNEL-POSTRTG`, `FLANNEL-FWD`) and the jumps to them with one
/// family's `iptables`, whoever left them (flanneld, or vxdp before the network config turned to
/// nftables); returns the chains that were there.
pub(super) fn remove_leftover_chains(
    iptables: PathBuf,
    restore: PathBuf,
) -> Result<Vec<&'static str>, MasqError> {
    let family = IptFamily {
        iptables,
        restore,
        random_fully: false,
        chains: flannel_chain_skeletons(),
    };
    let mut removed = Vec::new();
    for c in &family.chains {
        if family.list(c.table, c.name)?.is_some() {
            family.remove_chain(c)?;
            removed.push(c.name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MasqConfig {
        crate::masq::example_config(false)
    }

    fn lines(c: &OwnedChain) -> Vec<String> {
        c.rules
            .iter()
            .map(|r| {
                let q: Vec<String> = r.iter().map(|a| crate::masq::quote(a)).collect();
                format!("-A {} {}", c.name, q.join(" "))
            })
            .collect()
    }

    #[test]
    fn ipv4_rules_are_flannels() {
        let c = cfg();
        let cs = chains(&c, &c.families()[0], true);
        assert_eq!(cs.len(), 2);
        assert_eq!((cs[0].table, cs[0].from), ("nat", "POSTROUTING"));
        assert_eq!(
            cs[0].jump.join(" "),
            "-m comment --comment flanneld masq -j FLANNEL-POSTRTG"
        );
        assert_eq!(
            lines(&cs[0]),
            [
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.5.1.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        assert_eq!((cs[1].table, cs[1].from), ("filter", "FORWARD"));
        assert_eq!(
            cs[1].jump.join(" "),
            "-m comment --comment flanneld forward -j FLANNEL-FWD"
        );
        assert_eq!(
            lines(&cs[1]),
            [
                r#"-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
    }

    #[test]
    fn ipv6_rules_and_no_random_fully() {
        let c = cfg();
        let cs = chains(&c, &c.families()[1], false);
        let l = lines(&cs[0]);
        assert_eq!(
            l[4],
            r#"-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE"#
        );
        assert_eq!(
            l[3],
            r#"-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00:0:0:1::/64 -m comment --comment "flanneld masq" -j RETURN"#
        );
    }

    #[test]
    fn only_what_is_asked_for() {
        let mut c = cfg();
        c.ip_masq = false;
        let cs = chains(&c, &c.families()[0], true);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].name, FWD_CHAIN);
        c.forward_rules = false;
        assert!(chains(&c, &c.families()[0], true).is_empty());
    }

    #[test]
    fn restore_input_groups_by_table() {
        let c = cfg();
        let cs = chains(&c, &c.families()[0], true);
        let s = restore_input(&cs);
        assert!(s.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark"));
        assert!(s.contains("COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n-A FLANNEL-FWD -s 10.5.0.0/16"));
        assert!(s.ends_with("-j ACCEPT\nCOMMIT\n"));
        assert_eq!(s.matches("COMMIT").count(), 2);
    }

    #[test]
    fn leftover_cleanup_removes_the_chains_and_jumps_install_adds() {
        let c = cfg();
        let installed = chains(&c, &c.families()[0], true);
        let skeletons = flannel_chain_skeletons();
        assert_eq!(installed.len(), skeletons.len());
        for (i, s) in installed.iter().zip(&skeletons) {
            assert_eq!(
                (i.table, i.name, i.from, &i.jump),
                (s.table, s.name, s.from, &s.jump)
            );
        }
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("ip6tables v1.6.2"), Some((1, 6, 2)));
        assert_eq!(parse_version("iptables v1.4"), Some((1, 4, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("iptables v1.6.1").unwrap() < (1, 6, 2));
    }
}
