//! Destination addresses as the kernel programs key them.

/// One destination socket address. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so a connect4
/// to 10.0.0.1 and a connect6 to `::ffff:10.0.0.1` find the same entries.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address bytes in network order.
    pub addr: [u8; 16],
    /// Port in host order; 0 means "any port" in policy keys.
    pub port: u16,
    pub _pad: u16,
}

impl Endpoint {
    /// `ip` holds the four address bytes in network order.
    #[inline(always)]
    pub const fn v4(ip: [u8; 4], port: u16) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = ip[0];
        addr[13] = ip[1];
        addr[14] = ip[2];
        addr[15] = ip[3];
        Self {
            addr,
            port,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            _pad: 0,
        }
    }
}

/// The data part of a CIDR key in the LPM trie: the port comes first so that one trie serves
/// both "CIDR on one port" (prefix covers the port, then the address bits) and "CIDR on any
/// port" (stored with port 0, looked up a second time with port 0).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CidrData {
    /// Port in network order (the trie matches bits from the first byte on).
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of the port in a CIDR key's prefix.
pub const CIDR_PORT_BITS: u32 = 16;

impl CidrData {
    #[inline(always)]
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
        }
    }

    /// The prefix length of a key for `addr_bits` bits of the (IPv6 or IPv4-mapped) address.
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        CIDR_PORT_BITS + addr_bits
    }
}
