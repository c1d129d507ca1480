//! Names, inline when short: every table holds them, so their size is most of a peer's cost.

use std::sync::Arc;

/// A registered name, in 16 bytes. Names of up to [`INLINE_NAME`] bytes (nearly all: chat
/// handles are short) are stored inline, so that a lookup compares the key in the table's own
/// memory and a registration allocates nothing for it; longer ones are shared on the heap. Every
/// map of the registry is keyed or filled by names, so their size is most of a peer's cost.
#[derive(Clone)]
pub struct Name(pub(super) Repr);

/// The longest name stored inline.
pub const INLINE_NAME: usize = 15;

#[derive(Clone)]
pub(super) enum Repr {
    Inline {
        len: Len,
        bytes: [u8; INLINE_NAME],
    },
    /// A thin pointer (a `Box<str>` behind the `Arc`), so that the variant fits beside the
    /// inline one's length byte.
    Heap(Arc<Box<str>>),
}

/// An inline name's length. An enum rather than a `u8`, so that the values it cannot take
/// (16 and up) are free to mark the heap variant: `Name` is 16 bytes, not 24.
#[derive(Clone, Copy)]
#[repr(u8)]
#[rustfmt::skip]
pub(super) enum Len { L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15 }

#[rustfmt::skip]
const LENS: [Len; INLINE_NAME + 1] = [
    Len::L0, Len::L1, Len::L2, Len::L3, Len::L4, Len::L5, Len::L6, Len::L7,
    Len::L8, Len::L9, Len::L10, Len::L11, Len::L12, Len::L13, Len::L14, Len::L15,
];

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        match LENS.get(s.len()) {
            Some(&len) => {
                let mut bytes = [0; INLINE_NAME];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Name(Repr::Inline { len, bytes })
            }
            None => Name(Repr::Heap(Arc::new(Box::from(s)))),
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: inline bytes are only ever copied from a `&str`, up to `len`.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..*len as usize])
            },
            Repr::Heap(s) => s,
        }
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

/// Hashes as the `str` does, so that maps keyed by `Name` are looked up by `&str`.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h);
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
