pub mod guest;
pub mod sim_host;
