//! Privileged system calls (placeholder).
