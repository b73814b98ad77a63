"""The JSON report keys the main-job issue names as the interface other work relies on
(issue 2, "Interface other work will rely on"); written out here, independent of the code."""

REPORT_KEYS = (
    "simulated_time_s",
    "tokens_per_s",
    "achieved_flops_per_s",
    "mfu",
    "pe_utilisation",
    "breakdown",
    "sram_peak_bytes",
    "io_utilisation",
    "micro_batches",
    "numerics",
)
