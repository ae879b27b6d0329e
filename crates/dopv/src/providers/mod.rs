//! The providers dopv has. `libvirt` and `openstack` are cargo features (on by default); a
//! build without one refuses its plans with the feature's name (see
//! [`crate::provider::for_infrastructure`]).

pub mod baremetal;
#[cfg(any(feature = "openstack", feature = "libvirt"))]
pub mod cloudinit;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod local;
#[cfg(feature = "openstack")]
pub mod openstack;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Whether an sshd answers on the address (it sends its banner first). Blocks up to 2 s.
pub(crate) fn ssh_answers(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
            let mut banner = [0u8; 4];
            s.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
        }
        Err(_) => false,
    }
}
