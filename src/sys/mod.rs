//! Privileged system calls (placeholder).
#![allow(unsafe_code)]
pub mod sock;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct SysError;
pub enum NetnsRef {
    Pid(i32),
    Path(PathBuf),
}
pub struct LinkConfig {
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}
pub struct TapRequest {
    pub netns: NetnsRef,
    pub userns: Option<PathBuf>,
    pub tap_name: String,
    pub configure: Option<LinkConfig>,
    pub vnet_hdr: bool,
}
pub fn open_tap(_req: &TapRequest) -> Result<OwnedFd, SysError> {
    Err(SysError)
}
pub struct NamespacedChild;
impl NamespacedChild {
    pub fn pid(&self) -> i32 {
        0
    }
    pub fn release(self) -> Result<(), SysError> {
        Ok(())
    }
}
pub fn spawn_in_new_namespace(_c: &[OsString]) -> Result<NamespacedChild, SysError> {
    Err(SysError)
}
pub fn set_nonblocking(_fd: BorrowedFd) -> Result<(), SysError> {
    Ok(())
}
pub fn write_ready_byte(_fd: RawFd) -> Result<(), SysError> {
    Ok(())
}
