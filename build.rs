//! Compiles `proto/leanmq/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no hand-installed protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the env concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("leanmq_descriptor.bin"))
        .bytes(".leanmq.v1")
        .compile_protos(
            &[
                std::path::PathBuf::from("proto/leanmq/v1/broker.proto"),
                std::path::PathBuf::from("proto/leanmq/v1/admin.proto"),
            ],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
