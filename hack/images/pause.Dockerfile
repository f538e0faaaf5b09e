# The node's sandbox ("pause") image: no registry is reachable, so any local image whose entrypoint sleeps
# until signalled will do. tini makes SIGTERM end it at once.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ENTRYPOINT ["/usr/bin/tini", "--", "sleep", "infinity"]
