//! Whether a sign-in is worth a notice ("a new device signed in to your
//! account"): its device and network compared with those of the user's
//! other sessions within the lookback. Pure: the batch gives the sessions
//! (`apply::notices`), this says what is new.
//!
//! What counts, and why:
//! - a device is the browser family and the OS family woothee reads in the
//!   user agent (the sessions API's [`device`](super::device)); a session
//!   whose browser or OS woothee does not know (no user agent, a script, an
//!   unknown client) has no device: it is never new and counts as no known
//!   device, since telling a user "an unknown device signed in" every time
//!   a script does would teach them to ignore the emails;
//! - a network is the IPv4 /24 or the IPv6 /48 the address is in (an
//!   IPv4-mapped IPv6 address counts as its IPv4): the unit a home or an
//!   office keeps while its addresses change. No IP: no network, never new;
//! - an earlier session counts if its last activity is within the lookback
//!   of the sign-in, in any app or the same app only (the scope);
//! - nothing to compare with (no earlier session counts) gives no notice:
//!   a user's first session is not news. Nor does a kind of novelty with
//!   nothing known to compare with (every earlier session without a device,
//!   or without an IP).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::event::AppName;
use session_guard_protocol::api::Device;
pub use session_guard_protocol::notice::{Notice, NoticeFacts, NoticeKind, SignIn};

/// A device as notices compare them: browser family and OS family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub browser: String,
    pub os: String,
}

impl DeviceKey {
    /// The key of `device`; `None` unless woothee knew both its browser and
    /// its OS (see the module docs).
    pub fn of(device: &Device) -> Option<DeviceKey> {
        Some(DeviceKey {
            browser: device.browser.clone()?,
            os: device.os.clone()?,
        })
    }
}

/// The network an address is in: its IPv4 /24 or IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Network {
    /// The /24 or /48 of `ip` (an IPv4-mapped IPv6 address: its IPv4's).
    pub fn of(ip: IpAddr) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Network::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Network::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }

    /// Its first address (`10.0.9.0`, `2001:db8:1::`).
    pub fn first_address(self) -> IpAddr {
        match self {
            Network::V4([a, b, c]) => IpAddr::from([a, b, c, 0]),
            Network::V6(prefix) => {
                let mut octets = [0u8; 16];
                octets[..6].copy_from_slice(&prefix);
                IpAddr::from(octets)
            }
        }
    }
}

/// Where an earlier session of the user came from, and when it was last
/// active (several sessions alike may be one `Seen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub app: String,
    pub device: Option<DeviceKey>,
    pub network: Option<Network>,
    pub last_seen_at: DateTime<Utc>,
}

/// Which earlier sessions count: of every app, or of the sign-in's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AllApps,
    PerApp,
}

/// What notices are decided by (the `[notices]` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticePolicy {
    /// An earlier session counts if it was active this long before the
    /// sign-in, or later.
    pub lookback: Duration,
    pub scope: Scope,
    /// The kinds published; a sign-in with both a new device and a new
    /// network is of kind `new_device`.
    pub kinds: Vec<NoticeKind>,
}

/// A sign-in as the decision sees it.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub app: &'a AppName,
    /// The login's event time (the first event's when no login was seen).
    pub at: DateTime<Utc>,
    pub device: Option<DeviceKey>,
    pub network: Option<Network>,
}

impl NoticePolicy {
    /// What is new about `arrival` against the user's `earlier` sessions,
    /// if a notice of a published kind is due; `None` otherwise (nothing
    /// new, nothing to compare with, or a kind not published).
    pub fn decide<'s>(
        &self,
        arrival: &Arrival<'_>,
        earlier: impl IntoIterator<Item = &'s Seen>,
    ) -> Option<NoticeFacts> {
        let since = chrono::Duration::from_std(self.lookback)
            .ok()
            .and_then(|d| arrival.at.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut any = false;
        let mut devices: BTreeSet<&DeviceKey> = BTreeSet::new();
        let mut networks: BTreeSet<Network> = BTreeSet::new();
        let counted = earlier.into_iter().filter(|s| {
            s.last_seen_at >= since
                && (self.scope == Scope::AllApps || s.app == arrival.app.as_str())
        });
        for seen in counted {
            any = true;
            devices.extend(seen.device.as_ref());
            networks.extend(seen.network);
        }
        if !any {
            return None;
        }
        let new_device = !devices.is_empty()
            && arrival
                .device
                .as_ref()
                .is_some_and(|d| !devices.contains(d));
        let new_network =
            !networks.is_empty() && arrival.network.is_some_and(|n| !networks.contains(&n));
        let kind = if new_device {
            NoticeKind::NewDevice
        } else if new_network {
            NoticeKind::NewNetwork
        } else {
            return None;
        };
        if !self.kinds.contains(&kind) {
            return None;
        }
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Some(NoticeFacts {
            new_device,
            new_network,
            known_devices: count(devices.len()),
            known_networks: count(networks.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn dev(browser: &str, os: &str) -> Option<DeviceKey> {
        Some(DeviceKey {
            browser: browser.into(),
            os: os.into(),
        })
    }

    fn net(ip: &str) -> Option<Network> {
        Some(Network::of(ip.parse().unwrap()))
    }

    fn seen(app: &str, device: Option<DeviceKey>, network: Option<Network>, at: i64) -> Seen {
        Seen {
            app: app.into(),
            device,
            network,
            last_seen_at: t(at),
        }
    }

    fn policy(scope: Scope) -> NoticePolicy {
        NoticePolicy {
            lookback: Duration::from_secs(90 * DAY as u64),
            scope,
            kinds: NoticeKind::ALL.to_vec(),
        }
    }

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    fn arrival<'a>(
        app: &'a AppName,
        device: Option<DeviceKey>,
        network: Option<Network>,
    ) -> Arrival<'a> {
        Arrival {
            app,
            at: t(100 * DAY),
            device,
            network,
        }
    }

    #[test]
    fn the_device_is_browser_and_os_families_and_unknown_ones_are_none() {
        let firefox = crate::domain::device::device(Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ));
        assert_eq!(DeviceKey::of(&firefox), dev("Firefox", "Linux"));
        assert_eq!(DeviceKey::of(&crate::domain::device::device(None)), None);
        let curl = crate::domain::device::device(Some("curl/8.0"));
        assert_eq!(DeviceKey::of(&curl), None);
    }

    #[test]
    fn the_network_is_the_slash_24_or_slash_48() {
        assert_eq!(net("10.1.2.3"), net("10.1.2.200"));
        assert_ne!(net("10.1.2.3"), net("10.1.3.3"));
        assert_eq!(net("::ffff:10.1.2.3"), net("10.1.2.9"));
        assert_eq!(net("2001:db8:1::1"), net("2001:db8:1:ffff::2"));
        assert_ne!(net("2001:db8:1::1"), net("2001:db8:2::1"));
        let first = |ip: &str| Network::of(ip.parse().unwrap()).first_address().to_string();
        assert_eq!(first("10.1.2.3"), "10.1.2.0");
        assert_eq!(first("::ffff:10.1.2.3"), "10.1.2.0");
        assert_eq!(first("2001:db8:1:ffff::2"), "2001:db8:1::");
    }

    #[test]
    fn a_new_device_a_new_network_or_nothing() {
        let shop = shop();
        let earlier = [seen(
            "shop",
            dev("Firefox", "Linux"),
            net("10.0.0.1"),
            99 * DAY,
        )];
        let p = policy(Scope::AllApps);
        let chrome = p
            .decide(
                &arrival(&shop, dev("Chrome", "Android"), net("10.0.0.7")),
                &earlier,
            )
            .unwrap();
        assert_eq!(
            chrome,
            NoticeFacts {
                new_device: true,
                new_network: false,
                known_devices: 1,
                known_networks: 1
            }
        );
        let same = arrival(&shop, dev("Firefox", "Linux"), net("10.0.0.9"));
        assert_eq!(p.decide(&same, &earlier), None);
        let moved = arrival(&shop, dev("Firefox", "Linux"), net("10.0.1.9"));
        let facts = p.decide(&moved, &earlier).unwrap();
        assert!(!facts.new_device && facts.new_network);
        // The first session: nothing to compare with.
        assert_eq!(p.decide(&moved, &[]), None);
    }

    #[test]
    fn unknown_devices_and_missing_ips_are_never_new() {
        let shop = shop();
        let p = policy(Scope::AllApps);
        let known = [seen(
            "shop",
            dev("Firefox", "Linux"),
            net("10.0.0.1"),
            99 * DAY,
        )];
        assert_eq!(p.decide(&arrival(&shop, None, None), &known), None);
        // Earlier sessions with no device and no IP give nothing to compare.
        let blind = [seen("shop", None, None, 99 * DAY)];
        let chrome = arrival(&shop, dev("Chrome", "Android"), net("10.9.9.9"));
        assert_eq!(p.decide(&chrome, &blind), None);
    }

    #[test]
    fn the_lookback_and_the_scope_choose_what_counts() {
        let shop = shop();
        let chrome = arrival(&shop, dev("Chrome", "Android"), net("10.0.0.1"));
        let old = [seen(
            "shop",
            dev("Chrome", "Android"),
            net("10.0.0.1"),
            9 * DAY,
        )];
        // Last active 91 days before: it does not count, so nothing does.
        assert_eq!(policy(Scope::AllApps).decide(&chrome, &old), None);
        let mut recent = old.to_vec();
        recent.push(seen(
            "blog",
            dev("Firefox", "Linux"),
            net("10.0.0.1"),
            10 * DAY,
        ));
        let facts = policy(Scope::AllApps).decide(&chrome, &recent).unwrap();
        assert_eq!((facts.new_device, facts.known_devices), (true, 1));
        // Per app, the blog's session does not count either.
        assert_eq!(policy(Scope::PerApp).decide(&chrome, &recent), None);
    }

    #[test]
    fn only_the_published_kinds_are_due() {
        let shop = shop();
        let earlier = [seen(
            "shop",
            dev("Firefox", "Linux"),
            net("10.0.0.1"),
            99 * DAY,
        )];
        let mut p = policy(Scope::AllApps);
        p.kinds = vec![NoticeKind::NewNetwork];
        let both = arrival(&shop, dev("Chrome", "Android"), net("10.7.0.1"));
        assert_eq!(p.decide(&both, &earlier), None, "a new_device notice");
        let moved = arrival(&shop, dev("Firefox", "Linux"), net("10.7.0.1"));
        assert!(p.decide(&moved, &earlier).is_some());
    }

    fn any_seen() -> impl Strategy<Value = Seen> {
        (
            prop::sample::select(vec!["shop", "blog"]),
            prop::option::of((0u8..3, 0u8..3)),
            prop::option::of(0u8..4),
            0i64..200,
        )
            .prop_map(|(app, device, network, day)| Seen {
                app: app.into(),
                device: device.map(|(b, o)| DeviceKey {
                    browser: format!("b{b}"),
                    os: format!("o{o}"),
                }),
                network: network.map(|n| Network::V4([10, 0, n])),
                last_seen_at: t(day * DAY),
            })
    }

    proptest! {
        #[test]
        fn a_networks_first_address_is_in_it(octets in any::<[u8; 16]>(), v4 in any::<bool>()) {
            let ip = if v4 {
                IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
            } else {
                IpAddr::from(octets)
            };
            let network = Network::of(ip);
            prop_assert_eq!(Network::of(network.first_address()), network);
        }

        #[test]
        fn a_sign_in_like_a_counted_session_is_never_news(
            earlier in prop::collection::vec(any_seen(), 0..8),
            pick in any::<prop::sample::Index>(),
            per_app in any::<bool>(),
        ) {
            let p = policy(if per_app { Scope::PerApp } else { Scope::AllApps });
            prop_assume!(!earlier.is_empty());
            let twin = pick.get(&earlier);
            let app = AppName::parse(&twin.app).unwrap();
            let sign_in = Arrival {
                app: &app,
                at: twin.last_seen_at,
                device: twin.device.clone(),
                network: twin.network,
            };
            prop_assert_eq!(p.decide(&sign_in, &earlier), None);
        }

        #[test]
        fn more_earlier_sessions_never_make_a_sign_in_newer(
            earlier in prop::collection::vec(any_seen(), 0..8),
            more in prop::collection::vec(any_seen(), 0..4),
            arriving in any_seen(),
        ) {
            let p = policy(Scope::AllApps);
            let app = AppName::parse(&arriving.app).unwrap();
            let sign_in = Arrival {
                app: &app,
                at: t(150 * DAY),
                device: arriving.device.clone(),
                network: arriving.network,
            };
            let before = p.decide(&sign_in, &earlier);
            let mut all = earlier.clone();
            all.extend(more);
            let after = p.decide(&sign_in, &all);
            if let Some(before) = before {
                // A device already compared and known stays known.
                if let Some(after) = &after {
                    let compared = before.known_devices >= 1;
                    prop_assert!(!after.new_device || before.new_device || !compared);
                    prop_assert!(after.known_devices >= before.known_devices);
                    prop_assert!(after.known_networks >= before.known_networks);
                }
            }
            if let Some(after) = after {
                prop_assert!(after.new_device || after.new_network);
                prop_assert!(!after.new_device || after.known_devices >= 1);
                prop_assert!(!after.new_network || after.known_networks >= 1);
            }
        }
    }
}
