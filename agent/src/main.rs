//! The `freshtoken` binary; see the `freshtoken_agent` crate docs.

fn main() {
    std::process::exit(freshtoken_agent::main());
}
