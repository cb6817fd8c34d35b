# rbuild's own image: the static binary, CA certificates and a non-root
# user, nothing else. `make image` builds it with rbuild itself, no registry
# and no network needed:
#
#   make build      # bin/rbuild, statically linked
#   # stage the directories and the host's CA bundle in out/image/rootfs/
#   rbuild build --push=false -t rbuild:latest \
#       --output type=oci,dest=out/rbuild-image.tar .
#
# The context is the repository; .dockerignore lets only bin/rbuild and
# out/image/rootfs/ through. FROM scratch has no shell, so the root file
# system is assembled with COPY and WORKDIR in one stage and copied whole
# (ownership and modes kept) into a single layer.
# Run it as in docs/ci.md: user namespaces allowed (Kubernetes
# hostUsers: false), or as root without them (chroot isolation).

FROM scratch AS rootfs
# /tmp (1777), /home and the CA bundle, staged by the Makefile.
COPY out/image/rootfs/ /
COPY bin/rbuild /usr/local/bin/rbuild
COPY <<passwd <<group /etc/
root:x:0:0:root:/root:/sbin/nologin
rbuild:x:1000:1000:rbuild:/home/rbuild:/sbin/nologin
passwd
root:x:0:
rbuild:x:1000:
group
# After USER, WORKDIR creates its missing directories owned by that user:
# the home and the default state directory belong to rbuild.
USER 1000:1000
WORKDIR /home/rbuild/.local/share/rbuild

FROM scratch
COPY --from=rootfs / /
USER 1000:1000
ENV HOME=/home/rbuild \
    RBUILD_ROOT=/home/rbuild/.local/share/rbuild \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="rbuild" \
      org.opencontainers.image.description="Daemonless rootless OCI image builder for CI" \
      org.opencontainers.image.source="https://github.com/rbuild/rbuild"
ENTRYPOINT ["/usr/local/bin/rbuild"]
CMD ["--help"]
