# berth %postun: systemd forgets or re-reads the unit; an upgrade ($1 >= 1) restarts a berth
# that runs, on the new binary (the buffer keeps what it holds meanwhile).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart berth.service || :
    fi
fi
