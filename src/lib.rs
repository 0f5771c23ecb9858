//! slirpnet: a user-mode network helper for rootless containers, a drop-in replacement for
//! slirp4netns. See docs/architecture.md for the layout.

pub mod api;
pub mod api_server;
pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod event_loop;
pub mod fuzzing;
pub mod run;
pub mod splice;
pub mod stack;
pub mod sys;
pub mod throttle;
