//! Command line (placeholder).
