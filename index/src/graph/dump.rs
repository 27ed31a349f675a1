//! The dump format of asen's own graphs: two files, written and read in one pass each with
//! their CRC-32 computed on the way (so a reopen reads every byte once).
//!
//! `graph.asen.links`: a header (`ASENHNSW`, version, storage kind, dimension, `m`, points,
//! entry point, top level; little-endian), then per point in index order its data id (`u64`),
//! level (`u8`), auxiliary value (`f32`) and, for layers 0..=level, a count (`u8`) and that
//! many neighbour indices (`u32`).
//!
//! `graph.asen.vectors`: every point's stored vector in index order, components little-endian.
//!
//! Reading trusts nothing: sizes are checked against the file lengths before anything is
//! allocated, and every count, level and link is range-checked.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::hnsw::{Hnsw, MAX_LEVEL};
use super::storage::Kind;

pub(crate) const LINKS_FILE: &str = "graph.asen.links";
pub(crate) const VECTORS_FILE: &str = "graph.asen.vectors";
const MAGIC: &[u8; 8] = b"ASENHNSW";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 8 + 4 * 5 + 8 + 4 + 4;
/// Smallest record of one point: id, level, aux and the layer-0 count.
const MIN_POINT_BYTES: u64 = 8 + 1 + 4 + 1;

/// CRC-32 of the two files of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DumpCrcs {
    pub links: u32,
    pub vectors: u32,
}

/// Storage-kind code in the header.
fn kind_code<K: Kind>() -> u32 {
    match K::STORAGE {
        crate::schema::VectorStorage::F32 => 0,
        crate::schema::VectorStorage::F16 => 1,
        crate::schema::VectorStorage::Int8 => 2,
    }
}

struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn create(path: &Path) -> std::io::Result<Hashing<BufWriter<File>>> {
    Ok(Hashing {
        inner: BufWriter::with_capacity(1 << 20, File::create(path)?),
        crc: crc32fast::Hasher::new(),
    })
}

fn finish(w: Hashing<BufWriter<File>>) -> std::io::Result<u32> {
    let file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(w.crc.finalize())
}

/// Writes `g` into `dir` (which must exist). No insert may run meanwhile.
pub(crate) fn write<K: Kind>(g: &Hnsw<K>, dir: &Path) -> std::io::Result<DumpCrcs> {
    let n = g.len();
    let points = g.points();
    let (entry, top) = g
        .entry()
        .map_or((u32::MAX, u32::MAX), |(e, l)| (e, u32::from(l)));
    let dim = points.dim();

    let mut links = create(&dir.join(LINKS_FILE))?;
    links.write_all(MAGIC)?;
    for x in [VERSION, kind_code::<K>(), dim as u32, g.m() as u32] {
        links.write_all(&x.to_le_bytes())?;
    }
    links.write_all(&0u32.to_le_bytes())?; // reserved
    links.write_all(&(n as u64).to_le_bytes())?;
    links.write_all(&entry.to_le_bytes())?;
    links.write_all(&top.to_le_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    for i in 0..n as u32 {
        buf.clear();
        let level = points.level(i);
        buf.extend(points.id(i).to_le_bytes());
        buf.push(level);
        buf.extend(points.vector(i).1.to_le_bytes());
        for layer in 0..=level {
            let hood = g.neighbours(i, layer);
            buf.push(hood.len() as u8);
            buf.extend(hood.iter().flat_map(|j| j.to_le_bytes()));
        }
        links.write_all(&buf)?;
    }
    let crc_links = finish(links)?;

    let mut vectors = create(&dir.join(VECTORS_FILE))?;
    for i in 0..n as u32 {
        buf.clear();
        K::write_le(points.vector(i).0, &mut buf);
        vectors.write_all(&buf)?;
    }
    let crc_vectors = finish(vectors)?;
    Ok(DumpCrcs {
        links: crc_links,
        vectors: crc_vectors,
    })
}

/// A buffered reader whose CRC is updated a buffer (1 MiB) at a time, where the vectorised
/// CRC runs at full speed, rather than per small read.
type Checked = BufReader<Hashing<File>>;

fn open(path: &Path) -> Result<(Checked, u64), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let hashing = Hashing {
        inner: file,
        crc: crc32fast::Hasher::new(),
    };
    Ok((BufReader::with_capacity(1 << 20, hashing), len))
}

/// The CRC of everything the reader took from its file (the whole file once it is consumed).
fn crc_of(reader: Checked) -> u32 {
    reader.into_inner().crc.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads a dump written by [`write`] for a graph of `dim` components, checking it on the way.
/// The error says what is wrong.
pub(crate) fn read<K: Kind>(
    dir: &Path,
    dim: usize,
    ef_construction: usize,
) -> Result<(Hnsw<K>, DumpCrcs), String> {
    let (mut links, links_len) = open(&dir.join(LINKS_FILE))?;
    let mut header = [0u8; HEADER_BYTES as usize];
    links
        .read_exact(&mut header)
        .map_err(|_| "links file shorter than its header".to_string())?;
    if &header[..8] != MAGIC {
        return Err("not an asen graph dump (bad magic)".into());
    }
    let (version, kind, file_dim, m) = (
        u32_at(&header, 8),
        u32_at(&header, 12),
        u32_at(&header, 16) as usize,
        u32_at(&header, 20) as usize,
    );
    let n = u64_at(&header, 28);
    let (entry, top) = (u32_at(&header, 36), u32_at(&header, 40));
    if version != VERSION {
        return Err(format!("dump format version {version}, expected {VERSION}"));
    }
    if kind != kind_code::<K>() {
        return Err(format!(
            "dump holds storage kind {kind}, the schema says {:?}",
            K::STORAGE
        ));
    }
    if file_dim != dim {
        return Err(format!("dump has dimension {file_dim}, schema says {dim}"));
    }
    if !(2..=255).contains(&m) {
        return Err(format!("dump has m = {m}, outside 2..=255"));
    }
    if n > (links_len - HEADER_BYTES) / MIN_POINT_BYTES || n >= u64::from(u32::MAX) {
        return Err(format!("dump claims {n} points, more than its file holds"));
    }
    let (mut vectors, vectors_len) = open(&dir.join(VECTORS_FILE))?;
    let vector_bytes = dim * K::BYTES;
    if vectors_len != n * vector_bytes as u64 {
        return Err(format!(
            "vectors file has {vectors_len} bytes, {n} points of {vector_bytes} need {}",
            n * vector_bytes as u64
        ));
    }
    let n = n as usize;
    match (entry, top) {
        (u32::MAX, u32::MAX) if n == 0 => {}
        (e, t) if (e as usize) < n && t <= u32::from(MAX_LEVEL) => {}
        _ => return Err(format!("entry point {entry} at level {top} is invalid")),
    }

    let mut g = Hnsw::<K>::new(dim, m, ef_construction);
    // The vectors go from the file straight into the graph's buckets, a bucket at a time.
    g.fill_vectors(n, |bytes| {
        vectors
            .read_exact(bytes)
            .map_err(|e| format!("vectors file: {e}"))
    })?;
    let mut lists: Vec<Vec<u32>> = Vec::new();
    let mut fixed = [0u8; 13];
    let mut word = [0u8; 4];
    let mut raw = Vec::with_capacity(4 * 2 * m);
    for i in 0..n {
        links
            .read_exact(&mut fixed)
            .map_err(|_| format!("links file ends at point {i} of {n}"))?;
        let id = u64_at(&fixed, 0);
        let level = fixed[8];
        let aux = f32::from_le_bytes([fixed[9], fixed[10], fixed[11], fixed[12]]);
        if level > MAX_LEVEL || (i as u32 == entry && u32::from(level) != top) {
            return Err(format!("point {i} has an invalid level {level}"));
        }
        lists.resize_with(level as usize + 1, Vec::new);
        for (layer, list) in lists.iter_mut().enumerate() {
            let mut count = [0u8; 1];
            links
                .read_exact(&mut count)
                .map_err(|_| format!("links file ends in point {i}'s lists"))?;
            let cap = if layer == 0 { 2 * m } else { m };
            if count[0] as usize > cap {
                return Err(format!(
                    "point {i} has {} links on layer {layer}, at most {cap}",
                    count[0]
                ));
            }
            raw.resize(4 * count[0] as usize, 0);
            links
                .read_exact(&mut raw)
                .map_err(|_| format!("links file ends in point {i}'s lists"))?;
            list.clear();
            for b in raw.chunks_exact(4) {
                let j = u32_at(b, 0);
                if j as usize >= n {
                    return Err(format!("point {i} links to {j}, past {n} points"));
                }
                list.push(j);
            }
        }
        g.push_loaded_links(id, aux, &lists);
    }
    if links.read(&mut word).map_err(|e| e.to_string())? != 0 {
        return Err("links file has bytes after its last point".into());
    }
    if n > 0 {
        g.set_entry(Some((entry, top as u8)));
    }
    Ok((
        g,
        DumpCrcs {
            links: crc_of(links),
            vectors: crc_of(vectors),
        },
    ))
}
