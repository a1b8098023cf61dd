# berth %pre: the user, before %post makes /var/lib/berth for it.
set -e
# The berth system user, in the docker group for the Docker socket (the unit has
# SupplementaryGroups=docker). The docker group may not exist yet (Docker installed after
# berth): the unit cannot start without it, and Docker's own packages create it only when
# it is missing (addgroup --system / groupadd -r), so it is created here and Docker keeps it.
getent group docker >/dev/null || groupadd --system docker
if ! getent passwd berth >/dev/null; then
    # A berth group left behind (by hand, an old install) becomes the user's group.
    if getent group berth >/dev/null; then own="--gid berth"; else own=--user-group; fi
    useradd --system $own --groups docker --home-dir /var/lib/berth --no-create-home \
        --shell /usr/sbin/nologin --comment "berth log shipper" berth
else
    usermod --append --groups docker berth
fi
