//! Generates etcd's server-side recipe services (v3lockpb.Lock, v3electionpb.Election) and
//! its Auth service (etcdserverpb.Auth) from
//! `proto/` with protoc (Debian's protobuf-compiler, which `cargo xtask test` installs).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(
            &[
                "proto/recipes_common.proto",
                "proto/recipes.proto",
                "proto/election.proto",
                "proto/auth.proto",
            ],
            &["proto"],
        )
        .expect("compiling proto/ (is protoc installed? apt-get install protobuf-compiler)");
}
