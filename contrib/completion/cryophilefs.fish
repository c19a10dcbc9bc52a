# fish completion for cryophilefs: the installed cryophilefs prints its own script,
# so completions follow its options.
cryophilefs --print-completion fish 2>/dev/null | source
