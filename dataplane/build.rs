//! Compiles the XDP program in `bpf/` with clang and generates its libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "../bpf/xdp_vxlan.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("xdp_vxlan.skel.rs");
    // clang -target bpf does not search the multiarch include directory where Debian keeps
    // <asm/types.h>, which <linux/bpf.h> needs.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        other => panic!("no multiarch include directory known for target arch {other}"),
    };
    if let Err(err) = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            format!("-I/usr/include/{multiarch}"),
            "-Wall".to_string(),
            "-Werror".to_string(),
        ])
        .build_and_generate(&out)
    {
        panic!(
            "building the XDP program {SRC} failed: {err:#}\n\
             It needs clang, libelf-dev, zlib1g-dev and linux-libc-dev: run scripts/setup.sh"
        );
    }
    println!("cargo:rerun-if-changed={SRC}");
}
