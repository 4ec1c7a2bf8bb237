//! Compiles the gRPC APIs in `proto/` with protox (a protobuf compiler in Rust, so no `protoc`
//! has to be installed) and generates their tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../proto/tickflow/fairprice/v1/fair_price.proto",
        "../proto/tickflow/feed/v1/feed.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["../proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
