"""Scale-out on Ray (the backend's optional extra `cluster`): `cupid batch` on Ray Data and
`cupid serve --ray` on Ray Serve. Ray itself is imported only where it is used, so the rest of
the backend (and `cupid --help`) works without the extra."""
