//! A build without the `mpi` feature, started by an MPI launcher as one of several processes,
//! refuses to run (each copy would run the whole job and write the same files).
#![cfg(not(feature = "mpi"))]

#[path = "common/exe.rs"]
mod exe;

#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    for (var, value) in [("OMPI_COMM_WORLD_SIZE", "2"), ("PMI_SIZE", "4")] {
        let o = exe::lfgcl(["info", "--model", "resnet20"]).env(var, value).output().expect("run lfgcl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {err}");
        assert!(o.stdout.is_empty(), "{var}={value}: nothing runs");
        assert!(err.contains(&format!("one of {value} processes")) && err.contains("--features mpi"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // One process under a launcher is a plain run.
    let o = exe::lfgcl(["info", "--model", "resnet20"]).env("OMPI_COMM_WORLD_SIZE", "1").output().expect("run lfgcl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
