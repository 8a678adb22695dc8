//! Arbitrary bytes as a backup file (`weft snapshot restore`): a plain snapshot or one in
//! etcd's framing. Restoring must make a data dir that opens at the reported revision, or
//! fail with a clear error and create nothing; never panic, hang or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::restore_backup(data);
});
