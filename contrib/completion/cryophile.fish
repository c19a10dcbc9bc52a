# fish completion for cryophile: the installed cryophile prints its own script,
# so completions follow its options.
cryophile --print-completion fish 2>/dev/null | source
