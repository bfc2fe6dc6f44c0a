fn main() {
    lfgcl::cli::main()
}
