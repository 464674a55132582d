//! Time reading one guest file: `cargo run --release --example readfile IMAGE PATH`.
use std::io::Read;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t = std::time::Instant::now();
    let insp =
        ibkit_image::inspect(std::path::Path::new(&args[1]), &Default::default()).expect("inspect");
    eprintln!("inspect {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let (mut r, m) = insp.guest.open(&args[2]).expect("open").expect("exists");
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    eprintln!("read {n} of {} bytes in {:?}", m.size, t.elapsed());
}
