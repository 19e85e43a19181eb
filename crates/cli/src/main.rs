//! The `pm2rs` executable (placeholder while it is written).
fn main() {}
