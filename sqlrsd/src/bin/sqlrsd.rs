//! The sqlrsd daemon binary.
fn main() {}
