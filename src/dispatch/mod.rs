//! Where an invocation runs: locally, or on the best peer.
//!
//! The pure building blocks live here today: peak-EWMA and power-of-two
//! choices (`balance`), the retry budget (`budget`) and passive outlier
//! ejection (`eject`). They take `now` and do no I/O.

pub mod balance;
pub mod budget;
pub mod eject;
