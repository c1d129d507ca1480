//! Why a datagram is refused: one table maps each reason to its metric label, the `error` code
//! it is answered with (if any) and that answer's message, so that a refusal is one value,
//! counted and answered in one place (`Router::fail`).

use crate::wire::reply::ErrorCode;

macro_rules! reasons {
    ($($variant:ident => $label:literal, $code:expr, $message:literal, $doc:literal;)*) => {
        /// Why a datagram was refused (dropped without being served).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in counter order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason's label in metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }

            /// The `error` code a refusal is answered with, where the protocol answers it.
            pub fn code(self) -> Option<ErrorCode> {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The `message` of that answer.
            pub fn message(self) -> &'static str {
                match self {
                    $(Reason::$variant => $message,)*
                }
            }
        }
    };
}

impl Reason {
    /// The flags whose limit refused, for reasons that are a limit the operator sets (not bad
    /// input): what a warning about them tells the operator to look at.
    pub fn limit_flags(self) -> Option<&'static str> {
        Some(match self {
            Reason::TooLarge => "--max-datagram",
            Reason::RegistryFull => "--max-peers",
            Reason::AddressFull => "--max-names-per-address",
            Reason::WatchLimit => "--max-watch, --max-watch-per-host, --max-watch-total",
            Reason::SourceLimited => "--source-rate, --source-bytes",
            Reason::PrefixLimited => "--prefix-rate, --prefix-bytes",
            Reason::GlobalLimited => "--global-rate",
            Reason::RegistrationLimited => "--registration-rate",
            Reason::SignatureLimited => "--registration-rate, --signature-rate",
            Reason::MissLimited => "--miss-rate",
            Reason::ChannelLimit => "--max-channels, --max-channels-per-host, --max-channels-total",
            Reason::DeniedAddress => "--allowed-peer-ip, --denied-peer-ip",
            _ => return None,
        })
    }
}

use ErrorCode::*;

reasons! {
    UnknownFamily => "unknown_family", None, "",
        "First bytes match no datagram family.";
    MappedSource => "v4_mapped_source", None, "",
        "A native IPv6 datagram whose source is an IPv4-mapped address.";
    BadSource => "bad_source", None, "",
        "A source that is never a peer's: unspecified, multicast, broadcast, port 0, or loopback on a relay that does not listen there.";
    DeniedAddress => "denied_address", None, "",
        "A source in a private or internal range (or `--denied-peer-ip`) that `--allowed-peer-ip` does not allow.";
    TooLarge => "too_large", Some(TooLarge), "datagram too large",
        "Longer than `--max-datagram`, or a forward that would exceed a UDP datagram.";
    NotUtf8 => "not_utf8", Some(BadRequest), "datagram is not UTF-8",
        "A JSON datagram that is not valid UTF-8.";
    Syntax => "malformed_json", Some(BadRequest), "malformed JSON",
        "Not well-formed JSON, or not an object.";
    TooDeep => "too_deep", Some(BadRequest), "nested too deeply",
        "Nested deeper than the scanner allows.";
    Duplicate => "duplicate_field", Some(BadRequest), "duplicate field",
        "A routing field given twice.";
    WrongType => "wrong_field_type", Some(BadRequest), "field of the wrong type",
        "A routing field of the wrong JSON type.";
    MissingField => "missing_field", Some(BadRequest), "missing field",
        "A required field is absent.";
    RelayMessage => "relay_message", None, "",
        "A message of a type only a relay sends: never answered, so that two relays cannot be set to answer each other.";
    UnknownType => "unknown_type", Some(BadRequest), "unknown type",
        "A `type` this relay does not serve.";
    BadRequest => "bad_request", Some(BadRequest), "missing, repeated or mistyped field",
        "A control message whose fields do not parse.";
    InvalidName => "invalid_name", Some(InvalidName),
        "names are 1-64 bytes of UTF-8 without control characters",
        "A name that breaks the naming rules.";
    NameInUse => "name_in_use", Some(NameInUse), "name is live at another address",
        "A live name claimed from another address.";
    NotRegistered => "not_registered", Some(NotRegistered),
        "name is not registered at this address",
        "A sender without the registration it needs.";
    SessionRequired => "session_required", Some(SessionRequired),
        "this request needs the session of its name, from its address",
        "A request that must be authenticated and is not.";
    UnknownTarget => "unknown_target", Some(UnknownTarget), "target is not online",
        "A relay or bind to a name that is not live.";
    MeshMalformed => "mesh_malformed", None, "",
        "A datagram on the mesh that is no mesh datagram this relay reads.";
    MeshUnknownNode => "mesh_unknown_node", None, "",
        "A mesh datagram from a node the cluster does not list.";
    MeshBadMac => "mesh_bad_mac", None, "",
        "A mesh datagram whose MAC does not check under the mesh key.";
    MeshReplayed => "mesh_replayed", None, "",
        "A mesh datagram whose sequence number was seen, or is too old to tell.";
    MeshUnknownTarget => "mesh_unknown_target", None, "",
        "A mesh datagram for a name not registered here (it moved, or left).";
    ClusterBusy => "cluster_busy", Some(RateLimited), "too many registrations waiting, retry",
        "A registration that needs a cluster claim while the claims waiting fill their queue.";
    ClusterUnavailable => "cluster_unavailable", Some(RateLimited),
        "the cluster's directory did not answer, retry",
        "A registration whose cluster claim failed (Redis away or late).";
    RegistryFull => "registry_full", Some(RateLimited), "relay is full",
        "A new name beyond `--max-peers`.";
    AddressFull => "address_full", Some(RateLimited), "too many names at this address",
        "A new name at an address that holds `--max-names-per-address` names already.";
    Disabled => "disabled", Some(BadRequest), "disabled by the operator",
        "A request for a feature the operator switched off.";
    WatchLimit => "watch_limit", Some(WatchLimit), "watch limit reached",
        "A watch beyond the per-peer, per-host, per-network or relay-wide watch limit, or of a name watched by as many as it may be (in all, or from the watcher's network).";
    SourceLimited => "rate_limited_source", Some(RateLimited), "slow down",
        "Over the per-source datagram or byte rate.";
    PrefixLimited => "rate_limited_prefix", Some(RateLimited), "slow down",
        "Over the per-prefix (/24, /48) datagram or byte rate.";
    GlobalLimited => "rate_limited_global", Some(RateLimited), "slow down",
        "Over the relay-wide datagram rate (per worker share).";
    RegistrationLimited => "rate_limited_registrations", Some(RateLimited),
        "registering new names too fast",
        "New names from one source address (IP and port) too fast.";
    SignatureLimited => "rate_limited_signatures", Some(RateLimited),
        "checking signatures too fast",
        "A signed registration (its cookie good) beyond the signature checks its /56 (IPv4 \
         address), its /48 (/24) or the relay may cost a second.";
    MissLimited => "rate_limited_misses", Some(RateLimited),
        "looking up names that are not online too fast",
        "A `lookup` or `watch` beyond what its host (IPv4 address, IPv6 /64) or network (/24, /48) may ask of names that are not online.";
    ConnectLimited => "rate_limited_connects", Some(RateLimited),
        "asking for too many introductions",
        "A `connect` to a new target beyond the 16 one name may ask for in 30 s.";
    AuthRequired => "auth_required", Some(AuthRequired), "this relay requires signed registration",
        "An unsigned claim where signed registration is required.";
    BadSignature => "bad_signature", Some(BadSignature), "cookie or signature does not check",
        "A signed registration whose cookie or signature fails.";
    UnauthenticatedTarget => "unauthenticated_target", None, "",
        "A forward (signed mode) to a registration that never showed its cookie or session.";
    UntrustedPeer => "untrusted_peer", Some(UnknownTarget),
        "target has not shown its session from its address",
        "A `bind` to a registration that has not shown its session (or cookie) where it is.";
    ChannelLimit => "channel_limit", Some(RateLimited), "channel limit reached",
        "A `bind` beyond the per-peer, per-host or relay-wide channel limit.";
    UnknownChannel => "unknown_channel", Some(BadRequest), "no such channel of yours",
        "An `unbind` of a channel the sender does not hold.";
    FrameShort => "frame_short", None, "",
        "A channel frame shorter than its 6-byte header.";
    FrameFlags => "frame_flags", None, "",
        "A channel frame with flags other than zero.";
    ChannelGone => "channel_gone", None, "",
        "A channel frame under a number no channel has.";
    ChannelWrongSource => "channel_wrong_source", None, "",
        "A channel frame from an address other than its channel's owner's.";
    StunMalformed => "stun_malformed", None, "",
        "A STUN message whose lengths disagree, whose attributes overrun it, or whose FINGERPRINT is not last.";
    StunFingerprint => "stun_bad_fingerprint", None, "",
        "A STUN message whose FINGERPRINT does not match it.";
    StunNotRequest => "stun_not_binding_request", None, "",
        "A STUN indication, response, or method other than Binding.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_answers_fit_a_short_error() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
        for r in Reason::ALL {
            // The relay's own ASCII text: written without escapes, so its length is its size.
            assert!(
                r.message().is_ascii() && !r.message().contains('"'),
                "{r:?}"
            );
            assert_eq!(r.code().is_none(), r.message().is_empty(), "{r:?}");
        }
    }
}
