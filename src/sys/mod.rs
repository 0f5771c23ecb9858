//! Privileged system calls (placeholder).
#![allow(unsafe_code)]
pub mod sock;
