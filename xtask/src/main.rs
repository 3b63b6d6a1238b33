fn main() {
    println!("xtask: see `cargo xtask help`");
}
