//! Several relays acting as one: the directory of names and nodes in Redis ([`directory`]),
//! the link that keeps this relay's part of it and hears the others' ([`link`]), and the mesh
//! socket that takes the other relays' forwards ([`mesh`]). The mesh datagrams' bytes are
//! `relay_wire::mesh`, their trust `relay_core::mesh`, and what the directory's changes do here
//! `relay_core::elsewhere`.

pub mod directory;
pub mod link;
pub mod mesh;
