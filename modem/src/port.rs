//! The serial device a modem sits on, opened raw and non-blocking, as a
//! tokio `AsyncRead + AsyncWrite`.
//!
//! Written on `libc` termios and tokio's `AsyncFd` rather than on the
//! `serialport` crate, whose ports are blocking (tokio-serial wraps them
//! in mio-serial): a fax DTE needs only raw mode, 8N1, no flow control in
//! the line discipline (XON/XOFF from the modem is handled in
//! [`crate::class1`], since page data received may contain those octets),
//! and a readiness-driven fd. The device may be a real UART or a pty, as
//! iaxmodem's is.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ModemError;

/// An open serial device.
#[derive(Debug)]
pub struct SerialPort {
    fd: AsyncFd<File>,
}

impl SerialPort {
    /// Opens `device` (for example `/dev/ttyS0` or iaxmodem's pty) in raw
    /// mode at 115 200 bit/s, 8N1, with hardware and software flow control
    /// off in the driver, and DTR raised.
    pub fn open(device: &str) -> Result<SerialPort, ModemError> {
        let err = |what, source| ModemError::Device {
            device: device.to_owned(),
            what,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(device)
            .map_err(|e| err("opening", e))?;
        raw_mode(&file).map_err(|e| err("setting raw mode", e))?;
        // Nobody else opens it while we have it (a getty, ModemManager's
        // probes; root can still), and what a previous user left unread
        // would shift every answer by a line.
        // SAFETY: plain ioctls on the open descriptor `file` owns.
        unsafe {
            libc::ioctl(file.as_raw_fd(), libc::TIOCEXCL);
            libc::tcflush(file.as_raw_fd(), libc::TCIOFLUSH);
        }
        // SAFETY: the descriptor is owned by `file`, which the AsyncFd owns
        // from here until it is dropped; nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register(file) }
            .map_err(|e| err("registering with the runtime", e.into()))?;
        Ok(SerialPort { fd })
    }
}

/// Turns XON/XOFF output flow control of a serial line on and off (a
/// duplicate of the port's descriptor, so it can be used after the port
/// was split into reader and writer).
#[derive(Debug)]
pub struct FlowSwitch(std::os::fd::OwnedFd);

impl SerialPort {
    /// A [`FlowSwitch`] for this port.
    pub fn flow_switch(&self) -> Result<FlowSwitch, ModemError> {
        let fd = self
            .fd
            .get_ref()
            .try_clone()
            .map_err(|e| ModemError::io("duplicating the serial descriptor", e))?;
        Ok(FlowSwitch(fd.into()))
    }
}

impl FlowSwitch {
    /// On: the driver stops sending at the modem's XOFF until XON, down to
    /// the bytes in its transmit buffer (which user space cannot recall).
    /// Off: XON and XOFF arrive as data, as received page data needs.
    pub fn set(&self, on: bool) -> Result<(), ModemError> {
        let fd = self.0.as_raw_fd();
        // SAFETY: `fd` is open for the life of `self`; `t` is filled by
        // tcgetattr before use.
        let r = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                -1
            } else {
                if on {
                    t.c_iflag |= libc::IXON;
                } else {
                    t.c_iflag &= !libc::IXON;
                }
                libc::tcsetattr(fd, libc::TCSANOW, &t)
            }
        };
        if r == 0 {
            Ok(())
        } else {
            Err(ModemError::io(
                "switching XON/XOFF flow control",
                io::Error::last_os_error(),
            ))
        }
    }
}

fn raw_mode(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the whole
    // block, and `t` is a plain C struct that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        t.c_cflag &= !libc::CRTSCTS;
        t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        libc::cfsetispeed(&mut t, libc::B115200);
        libc::cfsetospeed(&mut t, libc::B115200);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error());
        }
        // DTR up (a pty has no modem lines: ENOTTY/EINVAL is fine there).
        let dtr: libc::c_int = libc::TIOCM_DTR;
        libc::ioctl(fd, libc::TIOCMBIS, &dtr);
    }
    Ok(())
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty whose other side closed reads EIO: the end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
