//! The sqlrs command line.
fn main() {}
