//! Addresses of the testbed for the benchmarks that run on it
//! (bench/reaction.rs, bench/live.rs): the variables of
//! scripts/testbed-ports.sh, else their defaults. The testbed runs on ports
//! of its own, never on the user's servers.

pub fn port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A database of the testbed's primary, replica or solo cluster
/// (`PACER_TESTBED_SOLO_PORT`, 15434).
pub fn pg(var: &str, default: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", port(var, default))
}

pub fn http(var: &str, default: u16) -> String {
    format!("http://127.0.0.1:{}", port(var, default))
}
