//! Which edges answer a client, for which ECS scope, and the per-worker
//! decision cache.
//!
//! A decision is a pure function of (function, client address, view, geo
//! database): `placement::rank_client` on the client's location, with the
//! client network's draw (`placement::client_draw`, which only matters for
//! displaced clients). The scope is the widest prefix around the client
//! over which that decision is the same, found by walking the database's
//! networks next to the client's (bounded work per cache miss, so an
//! answer is never wider than what was checked). A drawn decision (a
//! displaced client spread by capacity) depends on the client network
//! (/24, /56) too, so its scope is never wider than that network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::EdgeId;
use crate::geo::{GeoAnswer, GeoDb};
use crate::placement::{self, View};

/// At most this many edges per answer (`[dns].answers` is validated to 16).
pub(crate) const MAX_ANSWERS: usize = 16;
/// Database lookups one scope computation may spend widening, at most.
pub(crate) const WIDEN_BUDGET: u32 = 32;
/// Ranked candidates one scope computation may spend widening: with a
/// large fleet each step ranks every host, so fewer steps are taken (the
/// scope stays true, only less wide).
const WIDEN_WORK: usize = 4096;

/// The best edges for one client, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    edges: [u16; MAX_ANSWERS],
    len: u8,
    /// Every candidate was unhealthy or draining: served the nearest anyway.
    pub(crate) fallback: bool,
    /// The first edge was drawn by the client network's hash among
    /// near-equal candidates (a displaced client, `Ranking::drawn`): the
    /// decision depends on the client network, not only on its location.
    pub(crate) drawn: bool,
}

impl Choice {
    pub(crate) fn edges(&self) -> impl Iterator<Item = EdgeId> + '_ {
        self.edges[..self.len as usize]
            .iter()
            .map(|&e| usize::from(e))
    }
}

/// Ranks `hosts` for a client at `geo` whose network drew `draw`
/// (`placement::client_draw`) and keeps the best `n`.
pub(crate) fn choose(
    view: &View,
    hosts: &[EdgeId],
    geo: &GeoAnswer,
    draw: u64,
    n: usize,
) -> Choice {
    let ranking = placement::rank_client(view, hosts, geo.location, draw);
    let mut c = Choice {
        edges: [0; MAX_ANSWERS],
        len: 0,
        fallback: ranking.fallback,
        drawn: ranking.drawn(),
    };
    for (slot, edge) in c.edges.iter_mut().zip(ranking.top(n.min(MAX_ANSWERS))) {
        *slot = edge as u16;
        c.len += 1;
    }
    c
}

/// The widest prefix of `addr` (already masked to its source prefix) over
/// which the decision equals `choice`. Starts from the database network
/// that decided (`start`, always true: one network, one location) and
/// widens one bit at a time while every network in the sibling half gives
/// the same choice, spending at most `WIDEN_BUDGET` lookups (fewer for
/// functions on many edges, see `WIDEN_WORK`).
///
/// A drawn `choice` also depends on the client network
/// (`placement::client_network`, /24 or /56): its scope is the longer of
/// `start` and that network's prefix, never widened (other client networks
/// draw differently). A sibling network whose own choice is drawn stops
/// the widening: its client networks may get other answers, even where
/// its undrawn ranking equals `choice`.
pub(crate) fn scope(
    geo: &GeoDb,
    view: &View,
    hosts: &[EdgeId],
    n: usize,
    addr: IpAddr,
    start: u8,
    choice: &Choice,
) -> u8 {
    let (bits, a) = to_bits(addr);
    if choice.drawn {
        return start.max(spread_prefix(bits)).min(bits);
    }
    let mut s = start.min(bits);
    let mut budget = (WIDEN_WORK / hosts.len().max(1)).clamp(1, WIDEN_BUDGET as usize) as u32;
    while s > 0 {
        let block = 1u128 << (bits - s);
        let base = mask(a, s, bits) ^ block;
        let end = base + (block - 1);
        let mut cur = base;
        loop {
            if budget == 0 {
                return s;
            }
            budget -= 1;
            let g = geo.lookup(from_bits(cur, bits));
            // The draw is irrelevant here: a drawn sibling stops anyway.
            let other = choose(view, hosts, &g, 0, n);
            if other.drawn || other.edges().ne(choice.edges()) {
                return s;
            }
            let p = g.prefix_len.min(bits);
            if p == 0 {
                break;
            }
            let net_end = mask(cur, p, bits) + ((1u128 << (bits - p)) - 1);
            if net_end >= end {
                break;
            }
            cur = net_end + 1;
        }
        s -= 1;
    }
    0
}

/// The prefix length of the client network spreading draws for, in a
/// family of `bits` bits (`placement::client_network`).
pub(crate) fn spread_prefix(bits: u8) -> u8 {
    if bits == 32 {
        placement::SPREAD_PREFIX_V4
    } else {
        placement::SPREAD_PREFIX_V6
    }
}

/// The key of one decision: the same key always gives the same decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) function: u32,
    /// Client address masked to `prefix`.
    pub(crate) addr: u128,
    pub(crate) v6: bool,
    pub(crate) prefix: u8,
    /// Whether the scope was asked for (ECS present).
    pub(crate) ecs: bool,
    pub(crate) view_generation: u64,
    pub(crate) geo_generation: u64,
}

/// A cached decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) choice: Choice,
    /// ECS scope (0 when no ECS was asked).
    pub(crate) scope: u8,
}

/// A direct-mapped cache of decisions, one per worker (no locks, no
/// sharing). A collision replaces the older entry; the generations in the
/// key make stale entries unreachable once the view or the database
/// changes.
pub(crate) struct DecisionCache {
    slots: Box<[Option<(Key, Decision)>]>,
}

impl DecisionCache {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1).next_power_of_two();
        Self {
            slots: vec![None; size].into_boxed_slice(),
        }
    }

    pub(crate) fn get_or_insert(&mut self, key: Key, make: impl FnOnce() -> Decision) -> Decision {
        let i = (hash(&key) as usize) & (self.slots.len() - 1);
        match &self.slots[i] {
            Some((k, d)) if *k == key => *d,
            _ => {
                let d = make();
                self.slots[i] = Some((key, d));
                d
            }
        }
    }
}

impl Default for DecisionCache {
    fn default() -> Self {
        Self::new(4096)
    }
}

/// `addr` as (family bits, integer).
pub(crate) fn to_bits(addr: IpAddr) -> (u8, u128) {
    match addr {
        IpAddr::V4(a) => (32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (128, u128::from(a)),
    }
}

fn from_bits(v: u128, bits: u8) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Keeps the first `prefix` of `bits` bits.
pub(crate) fn mask(v: u128, prefix: u8, bits: u8) -> u128 {
    let prefix = prefix.min(bits);
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(bits - prefix);
    let full = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    v & (full >> keep << keep)
}

fn hash(k: &Key) -> u64 {
    // FxHash-style mixing: cheap, good enough for a direct-mapped table.
    const M: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0u64;
    for w in [
        u64::from(k.function),
        k.addr as u64,
        (k.addr >> 64) as u64,
        u64::from(k.prefix) | (u64::from(k.v6) << 8) | (u64::from(k.ecs) << 9),
        k.view_generation,
        k.geo_generation,
    ] {
        h = (h.rotate_left(5) ^ w).wrapping_mul(M);
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(0xc633_64ff, 24, 32), 0xc633_6400);
        assert_eq!(mask(0xffff_ffff, 0, 32), 0);
        assert_eq!(mask(0xffff_ffff, 32, 32), 0xffff_ffff);
        assert_eq!(mask(u128::MAX, 128, 128), u128::MAX);
        assert_eq!(mask(u128::MAX, 1, 128), 1u128 << 127);
    }
}
