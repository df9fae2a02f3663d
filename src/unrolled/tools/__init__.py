"""The tools over the library: conformance, explain, diagram, benchmark, report.

They use the library the way a user would, to check it against torch.nn (:mod:`.conformance`,
what ``unrolled verify`` runs), to show what it computes step by step (:mod:`.explain` and its
picture, :mod:`.diagram`; one LSTM or GRU cell gate by gate, :mod:`.cell_diagram`), and to
time it (:mod:`.benchmark`, :mod:`.benchmark_memory` and :mod:`.benchmark_report`, what
``unrolled bench`` runs). The command-line commands in
``unrolled/commands/`` call them. The dependency goes one way: the core library never imports
tools, so ``import unrolled`` stays light and nothing a model runs depends on a diagnostic.
"""
