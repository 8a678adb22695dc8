//! Experiment: the etcd KV Put RPC over a hand-written HTTP/2 connection loop (no h2, hyper,
//! tonic), to measure what a lean HTTP/2 implementation would cost per request against the
//! `h2` crate. Put only, no error handling worth the name. Not part of weft.
//!
//! cargo run --release -p weft-etcd-api --example raw_put -- DATA_DIR 127.0.0.1:23792

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_store::embedded::Embedded;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HPACK decoding as far as this experiment needs: representations, integers, the dynamic
/// table (entries kept as raw, possibly Huffman-coded, bytes), and which field is `:path`.
/// Huffman decoding itself is left out (a table-driven decoder costs ~1-2 ns per byte).
#[derive(Default)]
struct Hpack {
    table: std::collections::VecDeque<(bool, Bytes)>,
    size: usize,
}

fn int(b: &[u8], i: &mut usize, prefix: u8) -> anyhow::Result<usize> {
    let mask = (1u16 << prefix) as usize - 1;
    let mut v = (*b.get(*i).ok_or_else(|| anyhow::anyhow!("short"))? as usize) & mask;
    *i += 1;
    if v < mask {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*i).ok_or_else(|| anyhow::anyhow!("short"))? as usize;
        *i += 1;
        v += (c & 0x7f) << shift;
        shift += 7;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
}

fn string(b: &Bytes, i: &mut usize) -> anyhow::Result<Bytes> {
    let n = int(b, i, 7)?;
    anyhow::ensure!(*i + n <= b.len(), "short string");
    let s = b.slice(*i..*i + n);
    *i += n;
    Ok(s)
}

impl Hpack {
    fn is_path(&self, idx: usize) -> bool {
        match idx {
            4 | 5 => true,
            1..=61 => false,
            _ => self.table.get(idx - 62).is_some_and(|e| e.0),
        }
    }

    /// Returns the raw value of `:path`.
    fn decode(&mut self, b: Bytes) -> anyhow::Result<Option<Bytes>> {
        let mut i = 0;
        let mut path = None;
        while i < b.len() {
            let c = b[i];
            if c & 0x80 != 0 {
                let idx = int(&b, &mut i, 7)?;
                if self.is_path(idx) {
                    path = Some(Bytes::new());
                }
            } else if c & 0xe0 == 0x20 {
                int(&b, &mut i, 5)?;
            } else {
                let (prefix, index) = if c & 0x40 != 0 { (6, true) } else { (4, false) };
                let idx = int(&b, &mut i, prefix)?;
                let name_is_path = if idx == 0 {
                    let n = string(&b, &mut i)?;
                    &n[..] == b":path"
                } else {
                    self.is_path(idx)
                };
                let v = string(&b, &mut i)?;
                if name_is_path {
                    path = Some(v.clone());
                }
                if index {
                    self.size += 32 + 8 + v.len();
                    self.table.push_front((name_is_path, v));
                    while self.size > 4096 {
                        let (_, old) = self.table.pop_back().expect("entries");
                        self.size -= 32 + 8 + old.len();
                    }
                }
            }
        }
        Ok(path)
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const WINDOW: u32 = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::serve("/tmp/rawput", |s, store| async move {
        if let Err(e) = conn(s, store).await {
            eprintln!("conn: {e}");
        }
    })
    .await
}

fn frame_head(w: &mut BytesMut, len: usize, ty: u8, flags: u8, id: u32) {
    w.put_uint(len as u64, 3);
    w.put_u8(ty);
    w.put_u8(flags);
    w.put_u32(id);
}

async fn put(store: Arc<Embedded>, id: u32, body: Bytes) -> (u32, anyhow::Result<Bytes>) {
    (id, common::put(&store, &body).await)
}

fn respond(w: &mut BytesMut, id: u32, msg: &[u8]) {
    // :status 200 (static index 8), content-type: application/grpc (literal, name index 31)
    let head: &[u8] = b"\x88\x0f\x10\x10application/grpc";
    frame_head(w, head.len(), 1, 0x4, id);
    w.put_slice(head);
    frame_head(w, 5 + msg.len(), 0, 0, id);
    w.put_u8(0);
    w.put_u32(msg.len() as u32);
    w.put_slice(msg);
    // grpc-status: 0 (literal, new name), END_STREAM | END_HEADERS
    let trailers: &[u8] = b"\x00\x0bgrpc-status\x010";
    frame_head(w, trailers.len(), 1, 0x5, id);
    w.put_slice(trailers);
}

async fn conn(mut s: tokio::net::TcpStream, store: Arc<Embedded>) -> anyhow::Result<()> {
    let mut r = BytesMut::with_capacity(64 * 1024);
    let mut w = BytesMut::with_capacity(64 * 1024);
    while r.len() < PREFACE.len() {
        if s.read_buf(&mut r).await? == 0 {
            return Ok(());
        }
    }
    anyhow::ensure!(&r[..PREFACE.len()] == PREFACE, "bad preface");
    let _ = r.split_to(PREFACE.len());
    // SETTINGS: MAX_CONCURRENT_STREAMS 1024, INITIAL_WINDOW_SIZE 1 MiB; connection window 1 MiB.
    frame_head(&mut w, 12, 4, 0, 0);
    w.put_u16(3);
    w.put_u32(1024);
    w.put_u16(4);
    w.put_u32(WINDOW);
    frame_head(&mut w, 4, 8, 0, 0);
    w.put_u32(WINDOW - 65535);
    let mut dec = Hpack::default();
    let mut streams: HashMap<u32, BytesMut> = HashMap::new();
    let mut calls = FuturesUnordered::new();
    let mut consumed: u32 = 0;
    let mut send_window: i64 = 65535;
    loop {
        // Frames read so far.
        while r.len() >= 9 {
            let len = ((r[0] as usize) << 16) | ((r[1] as usize) << 8) | r[2] as usize;
            if r.len() < 9 + len {
                break;
            }
            let (ty, flags) = (r[3], r[4]);
            let id = u32::from_be_bytes([r[5], r[6], r[7], r[8]]) & 0x7fff_ffff;
            let f = r.split_to(9 + len).freeze();
            let mut p = f.slice(9..);
            match ty {
                0 => {
                    consumed += len as u32;
                    if flags & 0x8 != 0 {
                        let pad = p[0] as usize;
                        p = p.slice(1..p.len() - pad);
                    }
                    if let Some(b) = streams.get_mut(&id) {
                        b.extend_from_slice(&p);
                        if flags & 0x1 != 0 {
                            let body = streams.remove(&id).unwrap_or_default().freeze();
                            calls.push(put(store.clone(), id, body));
                        }
                    }
                }
                1 => {
                    anyhow::ensure!(flags & 0x4 != 0, "CONTINUATION not supported here");
                    let mut start = 0;
                    let mut end = p.len();
                    if flags & 0x8 != 0 {
                        start = 1;
                        end -= p[0] as usize;
                    }
                    if flags & 0x20 != 0 {
                        start += 5;
                    }
                    let path = dec.decode(p.slice(start..end))?;
                    anyhow::ensure!(path.is_some(), "no :path");
                    streams.insert(id, BytesMut::new());
                }
                3 => {
                    streams.remove(&id);
                }
                4 if flags & 0x1 == 0 => frame_head(&mut w, 0, 4, 0x1, 0),
                6 if flags & 0x1 == 0 => {
                    frame_head(&mut w, 8, 6, 0x1, 0);
                    w.put_slice(&p);
                }
                7 => return Ok(()),
                8 if id == 0 => {
                    send_window +=
                        (u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff) as i64;
                }
                _ => {}
            }
        }
        if consumed >= WINDOW / 2 {
            frame_head(&mut w, 4, 8, 0, 0);
            w.put_u32(consumed);
            consumed = 0;
        }
        // Calls that are done.
        while let Some(Some((id, res))) = calls.next().now_or_never() {
            let msg = res?;
            send_window -= 5 + msg.len() as i64;
            anyhow::ensure!(send_window >= 0, "client window exhausted (experiment)");
            respond(&mut w, id, &msg);
        }
        if !w.is_empty() {
            s.write_all(&w).await?;
            w.clear();
        }
        tokio::select! {
            n = s.read_buf(&mut r) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            Some((id, res)) = calls.next(), if !calls.is_empty() => {
                let msg = res?;
                send_window -= 5 + msg.len() as i64;
                respond(&mut w, id, &msg);
            }
        }
    }
}
