//! Compiles `sqlrs.proto` with protox (pure Rust: no protoc on the machine).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=sqlrs.proto");
    let fds = protox::compile(["sqlrs.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
