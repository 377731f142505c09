"""bench/run as a package: `procs` (child processes and readiness probes),
`suite` (components and rpc-bench runs), `scenarios` (the table `--only`
picks from), `report` (the results files), `cli` (the command line),
`otlp_sink` (the local OTLP receiver of the tracing scenario)."""
