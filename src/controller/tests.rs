//! Unit tests of the controller rules; properties live in tests/controller_props.rs.
