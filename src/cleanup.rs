//! `vxdp cleanup`: removes what a stopped vxdp left on the host and releases its lease.
//!
//! A stop leaves the node on the network, as flanneld's does (see `daemon`): the overlay
//! device with its address and routes, DirectRouting routes, the masquerade/forward rules, the
//! blackhole route and the lease all stay for the next start to adopt. This is the explicit
//! teardown, for taking a node out of the overlay for good. It reads the same flags and
//! environment as the daemon, so it finds the same store, network config, device and public IP.
//! The XDP program needs nothing here: it is attached through a bpf_link, which the kernel
//! detached when the daemon's process ended.

use std::net::IpAddr;

use anyhow::{bail, Context};
use control::blackhole::BlackholeRoute;
use control::interface::find_external_interface;
use control::masq::{MasqConfig, Masquerade};
use control::netlink::Netlink;
use control::store::LeaseStore;
use control::subnet_file;
use ipnet::IpNet;

use dataplane::backend::kernel::KernelBackendConfig;

use crate::cli::RunArgs;
use crate::daemon::{network_config, Signals};

/// Runs the cleanup against `store`. Refuses while a daemon answers on the control socket:
/// pulling the device from under it would black-hole the node.
pub async fn run<S: LeaseStore>(
    args: &RunArgs,
    store: &S,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    if crate::control_socket::query(&args.control_socket, "status").is_ok() {
        bail!(
            "vxdp is running (it answers on {}): stop it first (systemctl stop vxdp), then run \
             `vxdp cleanup` again, or stop it with --cleanup-on-exit",
            args.control_socket.display()
        );
    }
    let nl = Netlink::connect()?;
    let Some(config) = network_config(args, store, signals).await? else {
        return Ok(());
    };
    let hints = store.node_hints().await;
    let external = find_external_interface(
        &nl,
        &args.iface,
        &args.iface_regex,
        args.iface_can_reach,
        hints.public_ip.or(args.public_ip),
        args.public_ipv6,
        config.is_ipv6_only(),
    )
    .await?;
    // This node's leases: by PublicIP, or by PublicIPv6 in an IPv6-only network (where every
    // lease's PublicIP is 0.0.0.0).
    let node = match (external.public_ip, external.public_ipv6) {
        (Some(v4), _) => IpAddr::V4(v4),
        (None, Some(v6)) => IpAddr::V6(v6),
        (None, None) => bail!(
            "interface {} has no address to find this node's leases by; pass --public-ip (or \
             --public-ipv6 in an IPv6-only network)",
            external.link.name
        ),
    };
    let device = args
        .device
        .clone()
        .unwrap_or_else(|| format!("vxdp.{}", config.backend.vni));

    // The device first: with it go its address, the pod routes through it and (kernel
    // backend) its neighbour and FDB entries. A dual-stack network's kernel backend also has
    // the IPv6 link, and an IPv6-only network's has only that one.
    let mut devices = vec![device.clone()];
    if config.ipv6.is_some() {
        devices.push(KernelBackendConfig::v6_device_for(
            &device,
            config.backend.vni,
        ));
    }
    for device in &devices {
        match nl.link_by_name(device).await? {
            Some(link) => {
                nl.delete_link(link.index)
                    .await
                    .with_context(|| format!("deleting {device}"))?;
                tracing::info!(device = %device, "overlay device removed");
            }
            None => tracing::info!(device = %device, "no overlay device to remove"),
        }
    }

    let listing = store
        .list()
        .await
        .with_context(|| format!("listing the leases in the {}", store.describe()))?;
    let (own, peers): (Vec<_>, Vec<_>) = listing.leases.values().partition(|l| l.attrs.is_of(node));
    // DirectRouting routes (IPv4 only) go through the external interface, not the device.
    if config.backend.direct_routing && config.ipv4.is_some() {
        for peer in &peers {
            let Some(subnet) = peer.subnet else {
                continue;
            };
            nl.delete_route(
                IpNet::V4(subnet),
                IpAddr::V4(peer.attrs.public_ip),
                Some(external.link.index),
            )
            .await
            .with_context(|| format!("deleting the DirectRouting route to {subnet}"))?;
        }
    }

    // The subnets whose rules and blackhole route may be here: this node's leases, and the
    // one subnet.env names (the lease may have lapsed already).
    let mut subnets: Vec<_> = own.iter().map(|l| l.key()).collect();
    if let Ok(previous) = subnet_file::read_previous_subnet(&args.subnet_file) {
        if !subnets.contains(&previous) {
            subnets.push(previous);
        }
    }
    for subnet in &subnets {
        if args.ip_masq || args.iptables_forward_rules {
            let mut cfg = MasqConfig::for_lease(
                &config,
                subnet.ipv4,
                subnet.ipv6,
                args.ip_masq,
                args.iptables_forward_rules,
            );
            cfg.random_fully = !args.ip_masq_fully_random_disable;
            // Installing first is what finds the rule set in use (iptables or nftables, the
            // same choice the daemon made) and holds each rule exactly once; removing then
            // takes all of them, whether the daemon had written them or not.
            tokio::task::spawn_blocking(move || Masquerade::install(cfg)?.remove())
                .await?
                .with_context(|| format!("removing the masquerade/forward rules for {subnet}"))?;
            tracing::info!(subnet = %subnet, "masquerade/forward rules removed");
        }
        for net in blackhole_nets(&config, *subnet) {
            BlackholeRoute::new(nl.clone(), net)
                .remove()
                .await
                .with_context(|| format!("removing the blackhole route for {net}"))?;
        }
    }

    for lease in &own {
        store
            .remove(lease)
            .await
            .with_context(|| format!("releasing the lease {}", lease.key()))?;
        tracing::info!(subnet = %lease.key(), "lease released");
    }
    if own.is_empty() {
        tracing::info!(
            public_ip = %node,
            "no lease of this node's public IP in the {}",
            store.describe()
        );
    }
    Ok(())
}

/// The subnets of `key` that get a blackhole route (`--ip-blackhole-route`): each half whose
/// family the network config enables, as flanneld adds one per enabled family.
pub(crate) fn blackhole_nets(
    config: &control::config::NetworkConfig,
    key: control::lease::SubnetKey,
) -> Vec<IpNet> {
    let v4 = key.ipv4.filter(|_| config.ipv4.is_some()).map(IpNet::V4);
    let v6 = key.ipv6.filter(|_| config.ipv6.is_some()).map(IpNet::V6);
    v4.into_iter().chain(v6).collect()
}
