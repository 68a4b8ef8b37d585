//! Geo tests.
