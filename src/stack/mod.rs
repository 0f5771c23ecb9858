//! The virtual network core (placeholder).
