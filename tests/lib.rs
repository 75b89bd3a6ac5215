//! Corrosion's end-to-end suite. Each file next to this one is a test
//! binary that runs the built `corrosion` binary as users and their
//! programs do: clusters of agents over loopback QUIC, real clients
//! (py-consul, `dig`, the hickory client), rendered configs checked by
//! `nginx -t` and `haproxy -c`, hostile clients, a full disk. The harness is
//! `corro-testkit`; each crate's own tests sit beside its code.
