//! The nftables backend: tables `ip vxdp-flannel` and `ip6 vxdp-flannel`, each with the chains
//! `postrtg` (nat, hook postrouting, priority srcnat) and `forward` (filter, hook forward,
//! priority filter), flannel's chain names (`pkg/trafficmngr/nftables/nftables.go`).
//!
//! Every change is one `nft -f -` transaction. A table is (re)written as
//! `table F vxdp-flannel` + `delete table F vxdp-flannel` + its full definition: the first line
//! makes the delete valid when the table does not exist yet, so creating and replacing are the
//! same atomic step and a packet sees either the old table or the new one. Removal is the first
//! two lines. [`Nftables::ensure`] compares `nft list table` with what it read right after the
//! table was written, so a deleted, added or changed rule, or a deleted table, is noticed and the
//! table written again.

use std::path::PathBuf;

use super::{
    forward_rules, masq_rules, run, Addr, Family, FamilyNets, MasqConfig, MasqError, Ran, Rule,
    Verdict, KUBE_PROXY_MARK,
};

/// vxdp's table name, in both the `ip` and the `ip6` family.
pub(super) const TABLE: &str = "vxdp-flannel";

/// Installed tables.
#[derive(Debug)]
pub(super) struct Nftables {
    nft: PathBuf,
    random_fully: bool,
    tables: Vec<NftTable>,
}

#[derive(Debug)]
struct NftTable {
    /// `ip` or `ip6`.
    family: &'static str,
    /// The `table F vxdp-flannel { ... }` block.
    definition: String,
    /// `nft list table F vxdp-flannel` right after it was last written.
    snapshot: String,
}

fn family_keyword(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// One rule in nft syntax, with iptables' semantics (see the module doc of [`super`]).
pub(super) fn rule_line(r: &Rule, family: Family, random_fully: bool) -> String {
    let kw = family_keyword(family);
    let mut parts = Vec::new();
    if r.kube_proxy_mark {
        parts.push(format!(
            "meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x}"
        ));
    }
    for (dir, addr) in [("saddr", r.src), ("daddr", r.dst)] {
        match addr {
            Addr::Any => {}
            Addr::In(n) => parts.push(format!("{kw} {dir} {n}")),
            Addr::NotIn(n) => parts.push(format!("{kw} {dir} != {n}")),
        }
    }
    parts.push(
        match r.verdict {
            Verdict::Return => "return",
            Verdict::Accept => "accept",
            Verdict::Masquerade if random_fully => "masquerade fully-random",
            Verdict::Masquerade => "masquerade",
        }
        .to_owned(),
    );
    parts.push(format!("comment \"{}\"", r.comment));
    parts.join(" ")
}

/// The table for one family, or `None` when there is nothing to install.
pub(super) fn table_definition(
    cfg: &MasqConfig,
    nets: &FamilyNets,
    random_fully: bool,
) -> Option<String> {
    let kw = family_keyword(nets.family);
    let mut chains = Vec::new();
    if cfg.ip_masq {
        chains.push((
            "postrtg",
            "type nat hook postrouting priority srcnat; policy accept;",
            masq_rules(nets),
        ));
    }
    if cfg.forward_rules {
        chains.push((
            "forward",
            "type filter hook forward priority filter; policy accept;",
            forward_rules(nets),
        ));
    }
    if chains.is_empty() {
        return None;
    }
    let mut s = format!(
        "table {kw} {TABLE} {{\n\tcomment \"vxdp: flanneld --ip-masq and --iptables-forward-rules\"\n"
    );
    for (name, hook, rules) in chains {
        s.push_str(&format!("\tchain {name} {{\n\t\t{hook}\n"));
        for r in &rules {
            s.push_str(&format!(
                "\t\t{}\n",
                rule_line(r, nets.family, random_fully)
            ));
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    Some(s)
}

/// flanneld's own tables (`pkg/trafficmngr/nftables`: `ip flannel-ipv4`, `ip6 flannel-ipv6`),
/// which vxdp's tables replace.
pub(super) const FLANNELD_TABLES: [(&str, &str); 2] =
    [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// vxdp's own tables, in both families.
pub(super) const VXDP_TABLES: [(&str, &str); 2] = [("ip", TABLE), ("ip6", TABLE)];

/// Lines that delete `table F vxdp-flannel` whether or not it exists.
fn delete_lines(family: &str) -> String {
    delete_table_lines(family, TABLE)
}

/// Lines that delete `table F NAME` whether or not it exists: declaring a table that exists
/// changes nothing, and makes the delete valid when it did not.
fn delete_table_lines(family: &str, name: &str) -> String {
    format!("table {family} {name}\ndelete table {family} {name}\n")
}

/// Deletes those of `tables` that exist, in one transaction; returns them as `F NAME`.
pub(super) fn delete_leftover_tables(
    nft: &std::path::Path,
    tables: &[(&str, &str)],
) -> Result<Vec<String>, MasqError> {
    let mut present = Vec::new();
    for (family, name) in tables {
        let args: Vec<String> = ["list", "table", family, name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let ran = run(nft, &args, None)?;
        if ran.success {
            present.push((*family, *name));
        } else if !ran.stderr.contains("No such file or directory") {
            return Err(ran.error());
        }
    }
    if !present.is_empty() {
        let script: String = present
            .iter()
            .map(|(f, n)| delete_table_lines(f, n))
            .collect();
        let args = ["-f".to_owned(), "-".to_owned()];
        run(nft, &args, Some(&script))?.ok()?;
    }
    Ok(present.iter().map(|(f, n)| format!("{f} {n}")).collect())
}

/// Whether the kernel and nft take `masquerade fully-random`: flannel's `checkRandomfully`, a
/// `nft --check` (validated, never committed) of such a rule in a throwaway table.
fn supports_fully_random(nft: &std::path::Path) -> bool {
    let probe = format!(
        "table ip {TABLE}-probe {{\n\tchain probe {{\n\t\ttype nat hook postrouting priority srcnat; \
         policy accept;\n\t\tip saddr != 127.0.0.1 masquerade fully-random\n\t}}\n}}\n"
    );
    let out = run(
        nft,
        &["-c".to_owned(), "-f".to_owned(), "-".to_owned()],
        Some(&probe),
    )
    .and_then(Ran::ok);
    match out {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("nftables: masquerade fully-random unsupported, not using it: {e}");
            false
        }
    }
}

impl Nftables {
    /// Writes every family's table in one transaction.
    pub(super) fn install(nft: PathBuf, cfg: &MasqConfig) -> Result<Nftables, MasqError> {
        // Only masquerade rules take fully-random.
        let random_fully = cfg.ip_masq && cfg.random_fully && supports_fully_random(&nft);
        let tables = cfg
            .families()
            .iter()
            .filter_map(|nets| {
                table_definition(cfg, nets, random_fully).map(|definition| NftTable {
                    family: family_keyword(nets.family),
                    definition,
                    snapshot: String::new(),
                })
            })
            .collect();
        let mut n = Nftables {
            nft,
            random_fully,
            tables,
        };
        let all: Vec<usize> = (0..n.tables.len()).collect();
        if let Err(e) = n.write(&all) {
            if let Err(undo) = n.remove_all() {
                tracing::warn!("undoing a failed install left tables behind: {undo}");
            }
            return Err(e);
        }
        Ok(n)
    }

    /// Whether the masquerade rules use `fully-random`.
    pub(super) fn random_fully(&self) -> bool {
        self.random_fully
    }

    fn nft_file(&self, script: &str) -> Result<(), MasqError> {
        let args = ["-f".to_owned(), "-".to_owned()];
        run(&self.nft, &args, Some(script))?.ok().map(drop)
    }

    /// Replaces the tables at `which` in one transaction and records their listings.
    fn write(&mut self, which: &[usize]) -> Result<(), MasqError> {
        if which.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for &i in which {
            let t = &self.tables[i];
            script.push_str(&delete_lines(t.family));
            script.push_str(&t.definition);
        }
        self.nft_file(&script)?;
        for &i in which {
            let family = self.tables[i].family;
            let Some(listing) = self.list(family)? else {
                return Err(MasqError::Failed {
                    command: format!("{} list table {family} {TABLE}", self.nft.display()),
                    status: "the table is missing right after writing it".into(),
                    stderr: String::new(),
                    hint: "another program rewrote the ruleset at the same moment (`nft flush \
                           ruleset`?); retry"
                        .into(),
                });
            };
            self.tables[i].snapshot = listing;
        }
        Ok(())
    }

    /// `nft list table F vxdp-flannel`; `None` when it does not exist.
    fn list(&self, family: &str) -> Result<Option<String>, MasqError> {
        let args: Vec<String> = ["list", "table", family, TABLE]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let ran = run(&self.nft, &args, None)?;
        if ran.success {
            Ok(Some(ran.stdout))
        } else if ran.stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(ran.error())
        }
    }

    /// Rewrites every table that is missing or differs; `Ok(true)` if any did.
    pub(super) fn ensure(&mut self) -> Result<bool, MasqError> {
        let mut stale = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            if self.list(t.family)?.as_deref() != Some(t.snapshot.as_str()) {
                tracing::warn!(
                    "nftables table {} {TABLE} is missing or was changed; writing it again",
                    t.family
                );
                stale.push(i);
            }
        }
        self.write(&stale)?;
        Ok(!stale.is_empty())
    }

    /// Deletes the tables.
    pub(super) fn remove(self) -> Result<(), MasqError> {
        self.remove_all()
    }

    fn remove_all(&self) -> Result<(), MasqError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let script: String = self.tables.iter().map(|t| delete_lines(t.family)).collect();
        self.nft_file(&script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MasqConfig {
        crate::masq::example_config(true)
    }

    #[test]
    fn ipv4_table() {
        let c = cfg();
        let t = table_definition(&c, &c.families()[0], true).unwrap();
        assert_eq!(
            t,
            r#"table ip vxdp-flannel {
	comment "vxdp: flanneld --ip-masq and --iptables-forward-rules"
	chain postrtg {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x4000 == 0x4000 return comment "flanneld masq"
		ip saddr 10.5.1.0/24 ip daddr 10.5.0.0/16 return comment "flanneld masq"
		ip saddr 10.5.0.0/16 ip daddr 10.5.1.0/24 return comment "flanneld masq"
		ip saddr != 10.5.0.0/16 ip daddr 10.5.1.0/24 return comment "flanneld masq"
		ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
		ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random comment "flanneld masq"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.5.0.0/16 accept comment "flanneld forward"
		ip daddr 10.5.0.0/16 accept comment "flanneld forward"
	}
}
"#
        );
    }

    #[test]
    fn ipv6_table_without_fully_random() {
        let c = cfg();
        let t = table_definition(&c, &c.families()[1], false).unwrap();
        assert!(t.starts_with("table ip6 vxdp-flannel {"));
        assert!(t.contains(
            "\t\tip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade comment \"flanneld masq\"\n"
        ));
        assert!(t.contains(
            "\t\tip6 saddr != fc00::/48 ip6 daddr fc00:0:0:1::/64 return comment \"flanneld masq\"\n"
        ));
        assert!(!t.contains("fully-random"));
    }

    #[test]
    fn only_what_is_asked_for() {
        let mut c = cfg();
        c.ip_masq = false;
        let t = table_definition(&c, &c.families()[0], true).unwrap();
        assert!(!t.contains("postrtg") && t.contains("chain forward"));
        c.forward_rules = false;
        assert!(table_definition(&c, &c.families()[0], true).is_none());
    }

    #[test]
    fn delete_is_valid_for_a_missing_table() {
        assert_eq!(
            delete_lines("ip6"),
            "table ip6 vxdp-flannel\ndelete table ip6 vxdp-flannel\n"
        );
        assert_eq!(
            delete_table_lines("ip", "flannel-ipv4"),
            "table ip flannel-ipv4\ndelete table ip flannel-ipv4\n"
        );
    }
}
