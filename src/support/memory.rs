//! How much memory this process holds, for `/health` and `/metrics`.

/// Resident set size of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page_size)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_readable() {
        assert!(super::rss_bytes().unwrap() > 0);
    }
}
