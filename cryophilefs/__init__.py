"""cryophilefs: cryophile vaults as a FUSE filesystem (see cryophilefs(8)).

Layout: mount.py (command line, lifecycle), operations.py (the handlers),
tree.py (inodes), vaults.py (listings and archive state), writer.py
(incoming files → backups), reader.py (archives → plaintext, thaws),
faults.py (errors → errno, in one place), hugepages.py (the heap on huge
pages: the program starts itself again once).
"""
