//! Just enough of a BTF reader to find a struct member's byte offset in the running kernel.
//! Rust eBPF has no CO-RE relocations, so the daemon resolves the few offsets the programs need
//! and hands them over as read-only globals.

use std::path::Path;

use anyhow::{bail, Context, Result};

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// (name_off, type id, bit offset) for structs and unions.
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf {
    types: Vec<Type>, // index = type id - 1
    strings: Vec<u8>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let data = std::fs::read(path).with_context(|| {
            format!(
                "kernel BTF ({}) is needed (CONFIG_DEBUG_INFO_BTF=y)",
                path.display()
            )
        })?;
        Btf::parse(&data).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Btf> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("truncated")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("truncated")?.try_into()?,
            ))
        };
        if u16_at(0)? != 0xeb9f {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of bounds")?
            .to_vec();
        let mut types = Vec::new();
        let mut o = hdr_len + type_off;
        let end = o + type_len;
        while o < end {
            let name_off = u32_at(o)?;
            let info = u32_at(o + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        members.push((u32_at(m)?, u32_at(m + 4)?, u32_at(m + 8)?));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12, // DATASEC, ENUM64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            o += extra;
            types.push(Type {
                name_off,
                kind,
                kind_flag,
                members,
            });
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..len]
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .with_context(|| format!("struct {name} not found in kernel BTF"))?;
        self.find_member(t, member.as_bytes(), 0)
            .with_context(|| format!("struct {name} has no member {member} in kernel BTF"))
    }

    fn find_member(&self, t: &Type, member: &[u8], base_bits: u32) -> Option<u32> {
        for &(name_off, type_id, offset) in &t.members {
            let bits = if t.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let name = self.name(name_off);
            if name == member {
                return Some((base_bits + bits) / 8);
            }
            if name.is_empty() {
                let inner = self.types.get(type_id.checked_sub(1)? as usize)?;
                if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                    if let Some(o) = self.find_member(inner, member, base_bits + bits) {
                        return Some(o);
                    }
                }
            }
        }
        None
    }
}
