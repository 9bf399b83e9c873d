"""The cells of the benchmark grid, one module per kind, each with plain values in and records out.

- :mod:`.model_entry`: a loaded checkpoint (:class:`ModelEntry`, its table label) and the order a
  cell actually runs (:class:`Effective`: observed-first or plain, trained or not, coverage);
- :mod:`.rows`: :class:`RowMaker`, the summary and per-image records of one cell;
- :mod:`.likelihood`: per-image log-likelihoods (nats) → ``test_bpd``, ``cond_nll_bpd``,
  ``context_gain_bpd`` rows; order ensembles;
- :mod:`.completion`: completions → ``lpips``, ``psnr``, ``ssim``, ``l1_hole``, ``diversity`` rows
  (the per-sample metrics are a registry, :data:`.completion.SAMPLE_METRICS`);
- :mod:`.fidelity`: completions against a reference split → ``fid`` and ``kid`` rows.

:mod:`lmconv_bench.evaluate` walks the grid and decides, per cell, whether it is already stored,
which images this process computes and where the parts go; these modules do the arithmetic.
"""
