//! Opening files that other processes provide (a token file, an assertion
//! file) without ever blocking on them: the open is non-blocking, and
//! anything but a regular file is refused after an `fstat` of what was
//! opened (not of the path, which may change in between).

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::path::Path;

/// Why [`open`] did not give a regular file.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The open or the `fstat` failed.
    Io(io::Error),
    /// The path names something else: [`kind`] says what.
    NotRegular(&'static str),
}

/// What a file type is, in words ("a FIFO", "a directory"...), for errors.
pub(crate) fn kind(ty: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_fifo() {
            return "a FIFO";
        }
        if ty.is_char_device() {
            return "a character device";
        }
        if ty.is_block_device() {
            return "a block device";
        }
        if ty.is_socket() {
            return "a socket";
        }
    }
    if ty.is_dir() {
        "a directory"
    } else if ty.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Adds `O_NONBLOCK` (and `extra`) to `options` on unix: opening a FIFO
/// then returns at once instead of waiting for a writer. Regular files
/// ignore the flag.
pub(crate) fn non_blocking(options: &mut OpenOptions, #[allow(unused)] extra: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NONBLOCK.bits() | extra;
        options.custom_flags(i32::try_from(flags).unwrap_or(0));
    }
    #[cfg(not(unix))]
    let _ = options;
}

/// Opens `path` for reading without blocking and returns it if it is a
/// regular file (symbolic links are followed).
pub(crate) fn open(path: &Path) -> Result<File, OpenError> {
    let mut options = OpenOptions::new();
    options.read(true);
    non_blocking(&mut options, 0);
    let file = options.open(path).map_err(OpenError::Io)?;
    let ty = file.metadata().map_err(OpenError::Io)?.file_type();
    if ty.is_file() {
        Ok(file)
    } else {
        Err(OpenError::NotRegular(kind(&ty)))
    }
}
